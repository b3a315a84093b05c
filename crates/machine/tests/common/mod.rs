//! Test support: machines in a private base dir that is checked empty at the end, and
//! process checks.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::killpg;
use nix::unistd::Pid;
use qemu_machine::{Machine, MachineBuilder};

pub const QEMU: &str = "qemu-system-x86_64";
pub const T: Duration = Duration::from_secs(10);

/// The Linux test guest built by `guests/build-linux-guest.sh`: a builder that boots it
/// to a shell on ttyS0 (TCG here, KVM only where it really works), and its kernel version.
/// Fails, never skips, when the guest is not built.
pub fn linux_guest(scratch: &Scratch) -> (MachineBuilder, String) {
    let dir = std::env::var_os("QEMU_MACHINE_LINUX_GUEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/guests/linux")
        });
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

/// Waits for the Linux guest's shell prompt.
pub async fn wait_for_shell(vm: &Machine) {
    let console = vm.console().unwrap();
    console
        .expect_any(
            &"GUEST-READY".into(),
            &["Kernel panic".into()],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    console
        .expect("guest# ", Duration::from_secs(30))
        .await
        .unwrap();
}

/// A base dir for run dirs; dropping it asserts that every run dir is gone.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("scratch dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `qemu-system-x86_64 -nodefaults`, run dirs under this scratch dir.
    pub fn builder(&self) -> MachineBuilder {
        Machine::builder(QEMU)
            .base_temp_dir(self.path())
            .args(["-nodefaults"])
    }

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

/// True while any process of the group `pid` exists.
pub fn group_alive(pid: u32) -> bool {
    killpg(Pid::from_raw(pid as i32), None).is_ok()
}

/// Asserts the process group is gone within `timeout`.
pub fn assert_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while group_alive(pid) {
        assert!(Instant::now() < deadline, "process group {pid} still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Live children of this process that run QEMU.
pub fn qemu_children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(me)
            && comm.starts_with("qemu-system")
        {
            found.push(pid);
        }
    }
    found
}
