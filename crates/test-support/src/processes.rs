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

/// The name qemu-machine gives the watchdog it puts between itself and each QEMU.
pub const WATCHDOG_COMM: &str = "qemu-watchdog";

/// One line of `/proc/<pid>/stat`: pid, comm, state, ppid.
#[derive(Debug, Clone)]
pub struct ProcStat {
    /// The process id.
    pub pid: u32,
    /// Its command name (at most 15 bytes).
    pub comm: String,
    /// Its state letter (`Z` for a zombie).
    pub state: char,
    /// Its parent's pid.
    pub ppid: u32,
}

/// Reads `/proc/<pid>/stat`; `None` once the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm: stat.get(open + 1..close)?.to_string(),
        state,
        ppid,
    })
}

/// Every process visible in /proc.
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// QEMU processes this process is responsible for, zombies included (an unreaped child is
/// a leak): its children that run QEMU, the qemu-machine watchdogs it started
/// ([`WATCHDOG_COMM`]), and every child of those watchdogs (QEMU, a wrapper, or what a
/// wrapper left).
pub fn qemu_children() -> Vec<u32> {
    let me = std::process::id();
    let all = all_processes();
    let watchdogs: Vec<u32> = all
        .iter()
        .filter(|p| p.ppid == me && p.comm == WATCHDOG_COMM)
        .map(|p| p.pid)
        .collect();
    all.iter()
        .filter(|p| {
            (p.ppid == me && p.comm.starts_with("qemu-system"))
                || watchdogs.contains(&p.pid)
                || watchdogs.contains(&p.ppid)
        })
        .map(|p| p.pid)
        .collect()
}

/// Pids of processes whose command line contains `marker` (e.g. a unique `-name`).
pub fn processes_with_arg(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marker = marker.as_bytes();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(marker.len()).any(|w| w == marker))
        })
        .collect()
}

/// Dead or a zombie: either way not running any more.
pub fn dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|p| p.state == 'Z')
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
