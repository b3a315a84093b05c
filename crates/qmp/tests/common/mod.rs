//! Test support: a bare QEMU child with an inherited socketpair end, killed on drop, and
//! leak checks.

#![allow(dead_code, unused_imports)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use qemu_test_support::{open_fds, qemu, qemu_children, qemu_version};

/// A QEMU process that is killed and reaped when dropped.
pub struct Qemu {
    pub child: Child,
}

impl Qemu {
    /// Spawns QEMU with `-display none -nodefaults` plus `args`; `inherit` fds stay open in
    /// the child under their own numbers.
    pub fn spawn(args: &[String], inherit: &[RawFd]) -> Qemu {
        let mut command = Command::new(qemu());
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

pub fn keep_fd(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}
