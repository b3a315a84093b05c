//! Test support: a bare QEMU child with an inherited socketpair end, killed on drop, and
//! leak checks.

#![allow(dead_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";

/// A QEMU process that is killed and reaped when dropped.
pub struct Qemu {
    pub child: Child,
}

impl Qemu {
    /// Spawns QEMU with `-display none -nodefaults` plus `args`; `inherit` fds stay open in
    /// the child under their own numbers.
    pub fn spawn(args: &[String], inherit: &[RawFd]) -> Qemu {
        let mut command = Command::new(QEMU);
        command
            .args(["-display", "none", "-nodefaults"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let inherit = inherit.to_vec();
        // SAFETY: only async-signal-safe calls (fcntl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for fd in &inherit {
                    nix::fcntl::fcntl(
                        *fd,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )
                    .map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        Qemu {
            child: command.spawn().expect("spawn qemu-system-x86_64"),
        }
    }

    /// QEMU with its monitor on a socketpair; returns our end.
    pub fn with_socketpair(extra: &[&str]) -> (Qemu, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut args = vec![
            "-chardev".to_string(),
            format!("socket,id=mon,fd={fd}"),
            "-mon".into(),
            "chardev=mon,mode=control".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let qemu = Qemu::spawn(&args, &[fd]);
        drop(theirs);
        (qemu, ours)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Live child processes of this process that run QEMU.
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
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(me)
            && comm.starts_with("qemu-system")
            && fields.first() != Some(&"Z")
        {
            found.push(pid);
        }
    }
    found
}

pub fn keep_fd(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}
