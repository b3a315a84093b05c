//! Typed devices on [`MachineBuilder`]: memory and CPUs, a kernel to boot, disks, user-mode
//! networking with host port forwards, 9p host shares and an entropy source. Each is
//! validated before launch (an [`ErrorKind::Config`](crate::ErrorKind::Config) error that names the problem) and
//! rendered to QEMU's syntax at launch, values escaped (`,` as `,,`). Raw
//! [`args`](MachineBuilder::args) still come last and can add to or override them.
//!
//! ```
//! use qemu_machine::devices::{Disk, DiskInterface, Share9p, UserNet};
//! use qemu_machine::Machine;
//!
//! let builder = Machine::builder("qemu-system-x86_64")
//!     .memory_mib(512)
//!     .cpus(2)
//!     .disk(Disk::new("/images/root.qcow2").format("qcow2").interface(DiskInterface::Scsi))
//!     .user_net(UserNet::new().forward_tcp(0, 22))
//!     .share_9p(Share9p::new("host", "/srv/data"))
//!     .entropy();
//! ```

mod disk;
mod network;
mod share9p;

use std::path::{Path, PathBuf};

use crate::config::MachineBuilder;
use crate::error::{Error, Result};
use crate::option_value::escape_option_value;

pub use self::disk::{CacheMode, Disk, DiskInterface};
pub use self::network::UserNet;
pub use self::share9p::Share9p;
pub use crate::usernet::forwarded_port;

/// `path` as one value of a QEMU option list, commas doubled; an error if it is not UTF-8.
fn path_value(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .ok_or_else(|| Error::config(format!("{} is not valid UTF-8", path.display())))?;
    Ok(escape_option_value(text).into_owned())
}

/// The typed devices of a machine, rendered to arguments at launch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Devices {
    memory_mib: Option<u64>,
    cpus: Option<u32>,
    cpu_model: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    disks: Vec<Disk>,
    nets: Vec<UserNet>,
    shares: Vec<Share9p>,
    virtiofs: Vec<crate::virtiofs::VirtioFs>,
    entropy: bool,
}

impl Devices {
    /// Checks everything a launch would trip on.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.memory_mib == Some(0) {
            return Err(Error::config("memory must be at least 1 MiB"));
        }
        if self.cpus == Some(0) {
            return Err(Error::config("a machine needs at least one CPU"));
        }
        if self.cpu_model.as_deref().is_some_and(str::is_empty) {
            return Err(Error::config("the CPU model is empty"));
        }
        for (what, file) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if let Some(file) = file {
                if !file.is_file() {
                    return Err(Error::config(format!(
                        "{what} {} does not exist (or is not a file)",
                        file.display()
                    )));
                }
            }
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.cmdline.is_some()) {
            return Err(Error::config(
                "an initrd or a kernel command line needs a kernel",
            ));
        }
        for disk in &self.disks {
            disk.validate()?;
        }
        for share in &self.shares {
            share.validate()?;
        }
        for share in &self.virtiofs {
            share.validate()?;
        }
        let mut tags: Vec<&str> = self.shares.iter().map(|s| s.tag.as_str()).collect();
        tags.extend(self.virtiofs.iter().map(|s| s.tag()));
        tags.sort_unstable();
        if let Some(pair) = tags.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(format!("mount tag {:?} used twice", pair[0])));
        }
        Ok(())
    }

    /// The virtiofs shares, in the order of their chardevs.
    pub(crate) fn virtiofs(&self) -> &[crate::virtiofs::VirtioFs] {
        &self.virtiofs
    }

    /// The arguments without a run dir: each virtiofs chardev names the socket it would
    /// have there (at launch QEMU gets a connected socket by number instead).
    pub(crate) fn args(&self) -> Vec<String> {
        let chardevs: Vec<String> = (0..self.virtiofs.len())
            .map(|i| format!("path=RUN_DIR/virtiofs{i}.sock"))
            .collect();
        self.args_with(&chardevs)
    }

    /// The arguments, once [`validate`](Self::validate)d (a path that is not UTF-8 is
    /// left out here: validation refused it), with `virtiofs_chardevs` addressing each
    /// virtiofs share's daemon.
    pub(crate) fn args_with(&self, virtiofs_chardevs: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        let mut push = |a: &str, b: String| {
            argv.push(a.to_string());
            argv.push(b);
        };
        if let Some(mib) = self.memory_mib {
            push("-m", format!("{mib}M"));
        }
        if let Some(cpus) = self.cpus {
            push("-smp", cpus.to_string());
        }
        if let Some(model) = &self.cpu_model {
            push("-cpu", model.clone());
        }
        if let Some(kernel) = &self.kernel {
            push("-kernel", kernel.display().to_string());
        }
        if let Some(initrd) = &self.initrd {
            push("-initrd", initrd.display().to_string());
        }
        if let Some(cmdline) = &self.cmdline {
            push("-append", cmdline.clone());
        }
        if self
            .disks
            .iter()
            .any(|d| d.interface == DiskInterface::Scsi)
        {
            push("-device", "virtio-scsi-pci,id=qm-scsi".into());
        }
        for (i, disk) in self.disks.iter().enumerate() {
            argv.extend(disk.args(i));
        }
        for (i, net) in self.nets.iter().enumerate() {
            argv.extend(net.args(i));
        }
        for (i, share) in self.shares.iter().enumerate() {
            argv.extend(share.args(i));
        }
        if self.entropy {
            argv.extend(
                [
                    "-object",
                    "rng-random,id=qm-rng,filename=/dev/urandom",
                    "-device",
                    "virtio-rng-pci,rng=qm-rng",
                ]
                .map(String::from),
            );
        }
        argv.extend(crate::virtiofs::args(
            &self.virtiofs,
            self.memory_mib,
            virtiofs_chardevs,
        ));
        argv
    }
}

/// What saving and restoring a machine's state needs of its typed devices (see
/// [`saved_state`](crate::saved_state)).
impl Devices {
    /// Why QEMU could not migrate these devices, one sentence each (empty: it can).
    pub(crate) fn migration_blockers(&self) -> Vec<String> {
        let nine_p = self.shares.iter().map(|share| {
            format!(
                "the 9p share {:?} ({}): QEMU cannot migrate a 9p export (virtio-9p \
                 keeps host file handles the guest has open, so QEMU blocks migration \
                 while it is mounted)",
                share.tag,
                share.path.display()
            )
        });
        let virtiofs = self.virtiofs.iter().map(|share| {
            format!(
                "the virtiofs share {:?} ({}): its state lives in virtiofsd, outside QEMU, \
                 and QEMU refuses to migrate it",
                share.tag,
                share.path.display()
            )
        });
        nine_p.chain(virtiofs).collect()
    }

    /// The disks as `(drive id, image, writable, snapshot)`.
    pub(crate) fn disk_files(&self) -> Vec<(String, &Path, bool, bool)> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("qm-disk{i}"),
                    d.file.as_path(),
                    !d.read_only,
                    d.snapshot,
                )
            })
            .collect()
    }

    /// Every file a launch reads: kernel, initrd, disk images.
    pub(crate) fn input_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self
            .kernel
            .iter()
            .chain(&self.initrd)
            .map(|p| p.as_path())
            .collect();
        files.extend(self.disks.iter().map(|d| d.file.as_path()));
        files
    }

    /// Every writable disk becomes `snapshot=on`: QEMU's own temporary overlay takes the
    /// writes, and the image stays as it was.
    pub(crate) fn snapshot_writable_disks(&mut self) {
        for disk in &mut self.disks {
            if !disk.read_only {
                disk.snapshot = true;
            }
        }
    }
}

impl MachineBuilder {
    /// The QEMU arguments this builder's typed devices render to: the same ones, in the
    /// same order, that [`Machine::launch`](crate::Machine::launch) puts before the raw [`args`](Self::args). For
    /// showing a command line without launching (`qemu-machine run --dry-run`).
    ///
    /// ```
    /// use qemu_machine::{devices::Disk, Machine};
    ///
    /// let builder = Machine::builder("qemu-system-x86_64").cpus(2).disk(Disk::new("a,b.img"));
    /// let args = builder.device_args();
    /// assert!(args.windows(2).any(|w| w == ["-smp", "2"]));
    /// assert!(args.iter().any(|a| a.starts_with("file=a,,b.img,")));
    /// ```
    pub fn device_args(&self) -> Vec<String> {
        self.config.devices.args()
    }
}

impl MachineBuilder {
    fn devices(&mut self) -> &mut Devices {
        &mut self.config.devices
    }

    /// Guest memory in MiB (`-m`).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64").memory_mib(256);
    /// ```
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.devices().memory_mib = Some(mib);
        self
    }

    /// How many vCPUs (`-smp`).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64").cpus(2);
    /// ```
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.devices().cpus = Some(cpus);
        self
    }

    /// The CPU model (`-cpu`, e.g. `max` or `host`), taken as QEMU's syntax (features
    /// after commas).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64").cpu_model("max");
    /// ```
    pub fn cpu_model(mut self, model: impl Into<String>) -> Self {
        self.devices().cpu_model = Some(model.into());
        self
    }

    /// Boots this Linux kernel directly (`-kernel`).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64").kernel("/boot/vmlinuz");
    /// ```
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.devices().kernel = Some(path.into());
        self
    }

    /// The initial ramdisk for [`kernel`](Self::kernel) (`-initrd`).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64")
    ///     .kernel("/boot/vmlinuz")
    ///     .initrd("/boot/initrd.img");
    /// ```
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.devices().initrd = Some(path.into());
        self
    }

    /// The kernel command line (`-append`).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64")
    ///     .kernel("/boot/vmlinuz")
    ///     .kernel_cmdline("console=ttyS0");
    /// ```
    pub fn kernel_cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.devices().cmdline = Some(cmdline.into());
        self
    }

    /// Adds a disk.
    ///
    /// ```
    /// use qemu_machine::devices::Disk;
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64").disk(Disk::new("/tmp/a.img"));
    /// ```
    pub fn disk(mut self, disk: Disk) -> Self {
        self.devices().disks.push(disk);
        self
    }

    /// Adds a user-mode network card.
    ///
    /// ```
    /// use qemu_machine::devices::UserNet;
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64")
    ///     .user_net(UserNet::new().forward_tcp(0, 22));
    /// ```
    pub fn user_net(mut self, net: UserNet) -> Self {
        self.devices().nets.push(net);
        self
    }

    /// Shares a host directory over 9p.
    ///
    /// ```
    /// use qemu_machine::devices::Share9p;
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64")
    ///     .share_9p(Share9p::new("data", "/srv/data"));
    /// ```
    pub fn share_9p(mut self, share: Share9p) -> Self {
        self.devices().shares.push(share);
        self
    }

    /// Shares a host directory over virtiofs, served by a `virtiofsd` started and stopped
    /// with the machine (see [`VirtioFs`](crate::virtiofs::VirtioFs)).
    ///
    /// ```
    /// use qemu_machine::virtiofs::VirtioFs;
    /// let builder = qemu_machine::Machine::builder("qemu-system-x86_64")
    ///     .memory_mib(256)
    ///     .share_virtiofs(VirtioFs::new("data", "/srv/data"));
    /// ```
    pub fn share_virtiofs(mut self, share: crate::virtiofs::VirtioFs) -> Self {
        self.devices().virtiofs.push(share);
        self
    }

    /// Adds an entropy source (`virtio-rng-pci` fed from the host's `/dev/urandom`).
    ///
    /// ```
    /// let b = qemu_machine::Machine::builder("qemu-system-x86_64").entropy();
    /// ```
    pub fn entropy(mut self) -> Self {
        self.devices().entropy = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Machine};

    #[test]
    fn renders_escaped_devices() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a,b.img");
        std::fs::write(&image, b"").unwrap();
        let builder = Machine::builder("qemu")
            .memory_mib(256)
            .cpus(2)
            .disk(Disk::new(&image).read_only(true).boot_index(1))
            .disk(
                Disk::new(&image)
                    .interface(DiskInterface::Scsi)
                    .snapshot(true),
            )
            .disk(
                Disk::new(&image)
                    .interface(DiskInterface::Scsi)
                    .cache(CacheMode::Unsafe),
            )
            .user_net(UserNet::new().forward_tcp(0, 22))
            .share_9p(Share9p::new("t", dir.path()))
            .entropy();
        let devices = &builder.config.devices;
        devices.validate().unwrap();
        let text = devices.args().join(" ");
        let file = format!("{}/a,,b.img", dir.path().display());
        assert_eq!(
            text,
            format!(
                "-m 256M -smp 2 -device virtio-scsi-pci,id=qm-scsi \
                 -drive file={file},format=raw,if=none,id=qm-disk0,readonly=on \
                 -device virtio-blk-pci,drive=qm-disk0,bootindex=1 \
                 -drive file={file},format=raw,if=none,id=qm-disk1,snapshot=on \
                 -device scsi-hd,bus=qm-scsi.0,drive=qm-disk1 \
                 -drive file={file},format=raw,if=none,id=qm-disk2,cache=unsafe \
                 -device scsi-hd,bus=qm-scsi.0,drive=qm-disk2 \
                 -netdev user,id=qm-net0,hostfwd=tcp:127.0.0.1:0-:22 \
                 -device virtio-net-pci,netdev=qm-net0 \
                 -fsdev local,id=qm-fs0,path={},security_model=none,readonly=on \
                 -device virtio-9p-pci,fsdev=qm-fs0,mount_tag=t \
                 -object rng-random,id=qm-rng,filename=/dev/urandom \
                 -device virtio-rng-pci,rng=qm-rng",
                dir.path().display()
            )
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.img");
        std::fs::write(&image, b"").unwrap();
        let cases = [
            (
                Machine::builder("q").disk(Disk::new("/nonexistent.img")),
                "does not exist",
            ),
            (
                Machine::builder("q").disk(Disk::new(&image).format("qcow3")),
                "unknown image format",
            ),
            (
                Machine::builder("q").disk(
                    Disk::new(&image)
                        .interface(DiskInterface::Ide)
                        .read_only(true),
                ),
                "read-only",
            ),
            (
                Machine::builder("q").kernel("/nonexistent/vmlinuz"),
                "kernel",
            ),
            (Machine::builder("q").kernel_cmdline("x"), "needs a kernel"),
            (
                Machine::builder("q").share_9p(Share9p::new("t", &image)),
                "not a directory",
            ),
            (
                Machine::builder("q").share_9p(Share9p::new("", dir.path())),
                "1 to 31",
            ),
            (Machine::builder("q").memory_mib(0), "memory"),
            (Machine::builder("q").cpus(0), "CPU"),
        ];
        for (builder, wanted) in cases {
            let err = builder.resolve().unwrap_err();
            assert!(matches!(err.kind(), ErrorKind::Config(_)), "{err}");
            assert!(err.to_string().contains(wanted), "{err} lacks {wanted}");
        }
    }
}
