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
