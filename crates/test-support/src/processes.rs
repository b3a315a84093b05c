//! Process guards and leak checks: a child killed and reaped when its guard drops (so a
//! failing test leaks nothing), the QEMU children of this process, open descriptors.

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::killpg;
use nix::unistd::Pid;

/// A child process that is killed and reaped when dropped, even when the test panics.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Children of this process that run QEMU, zombies included (an unreaped child is a leak).
pub fn qemu_children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && comm.starts_with("qemu-system") {
            found.push(pid);
        }
    }
    found
}

/// True while any process of the group `pgid` exists.
pub fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// Panics unless the process group `pgid` is gone within `timeout`.
pub fn assert_group_gone(pgid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "process group {pgid} still alive after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
