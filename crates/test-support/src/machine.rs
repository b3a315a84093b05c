//! For the machine crate's tests (feature `machine`): machines in a private base dir that
//! is checked empty at the end, the Linux test guest, and the process checks under the
//! names those tests use.

use std::path::Path;
use std::time::Duration;

use qemu_machine::{Machine, MachineBuilder};

pub use crate::guests::{linux_9p_guest_dir, linux_guest_dir};
pub use crate::{assert_group_gone as assert_gone, group_alive, open_fds, qemu, qemu_children};

/// The default deadline of a test's waits.
pub const T: Duration = Duration::from_secs(10);

/// The Linux test guest built by `guests/build-linux-guest.sh`: a builder that boots it
/// to a shell on ttyS0 (TCG here, KVM only where it really works), and its kernel version.
/// Fails, never skips, when the guest is not built.
pub fn linux_guest(scratch: &Scratch) -> (MachineBuilder, String) {
    let dir = linux_guest_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    assert!(
        kernel.exists() && initrd.exists(),
        "the Linux test guest is not in {}: run guests/build-linux-guest.sh (scripts/test does)",
        dir.display()
    );
    let version = std::fs::read_to_string(dir.join("version")).unwrap_or_default();
    let builder = scratch
        .builder()
        .machine_type("pc")
        .accel(qemu_machine::Accel::KvmOrTcg)
        .console(None, 0)
        .args(["-m", "256M", "-no-reboot"])
        .args(["-kernel", &kernel.display().to_string()])
        .args(["-initrd", &initrd.display().to_string()])
        .args(["-append", "console=ttyS0 quiet panic=-1"]);
    (builder, version.trim().to_string())
}

/// The Debian 12 guest of `guests/build-debian-guest.sh` (systemd, a root autologin getty
/// on ttyS0, qemu-guest-agent) on the Linux test guest's kernel: a builder that boots it
/// with its disk in snapshot mode, and the guest agent channel. Fails, never skips, when the
/// image is not built (`$QEMU_MACHINE_DEBIAN_GUEST` names another image).
pub fn debian_guest(scratch: &Scratch) -> MachineBuilder {
    let image = crate::guests::debian_guest_image();
    let dir = linux_guest_dir();
    scratch
        .builder()
        .machine_type("pc")
        .accel(qemu_machine::Accel::KvmOrTcg)
        .console(None, 0)
        .guest_agent()
        .memory_mib(512)
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initrd.gz"))
        .kernel_cmdline("console=ttyS0 root=/dev/vda")
        .disk(qemu_machine::devices::Disk::new(image).snapshot(true))
        .args(["-no-reboot"])
}

/// The version of the Linux test guest's qemu-ga, as the build recorded it.
pub fn linux_guest_agent_version() -> String {
    let path = linux_guest_dir().join("qemu-ga-version");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run guests/build-linux-guest.sh)", path.display()))
        .trim()
        .to_string()
}

/// Waits for the Linux guest's shell prompt.
pub async fn wait_for_shell(vm: &Machine) {
    let console = vm.console().unwrap();
    console
        .expect_any("GUEST-READY", ["Kernel panic"], Duration::from_secs(120))
        .await
        .unwrap();
    console
        .expect("guest# ", Duration::from_secs(30))
        .await
        .unwrap();
}

/// A base dir for run dirs; dropping it asserts that every run dir is gone.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    /// A new, empty scratch dir.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("scratch dir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `qemu-system-x86_64 -nodefaults`, run dirs under this scratch dir.
    pub fn builder(&self) -> MachineBuilder {
        Machine::builder(qemu())
            .base_temp_dir(self.path())
            .args(["-nodefaults"])
    }

    /// The names of what is in it now.
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .expect("read scratch")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let left = self.entries();
            assert!(left.is_empty(), "run dirs left behind: {left:?}");
        }
    }
}
