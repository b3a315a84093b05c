//! A bare QEMU child for tests of the QMP client alone: `qemu-system-x86_64 -display none
//! -nodefaults` plus the test's arguments, with chosen descriptors inherited, killed and
//! reaped when dropped (through [`KillOnDrop`]) so a failing test leaks no process.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{qemu, KillOnDrop};

/// A QEMU process started without the machine crate, killed and reaped when dropped.
#[derive(Debug)]
pub struct BareQemu {
    /// The child, behind its kill-on-drop guard.
    pub child: KillOnDrop,
}

impl BareQemu {
    /// Spawns QEMU with `-display none -nodefaults` plus `args`; the `inherit` descriptors
    /// stay open in the child under their own numbers.
    ///
    /// # Panics
    /// When QEMU cannot be spawned.
    pub fn spawn(args: &[String], inherit: &[RawFd]) -> BareQemu {
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
        BareQemu {
            child: KillOnDrop(command.spawn().expect("spawn qemu-system-x86_64")),
        }
    }

    /// QEMU with its QMP monitor on a socketpair, plus `extra` arguments; returns our end.
    ///
    /// # Panics
    /// When the socketpair cannot be made or QEMU cannot be spawned.
    pub fn with_socketpair(extra: &[&str]) -> (BareQemu, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let fd = theirs.as_raw_fd();
        let mut args = vec![
            "-chardev".to_string(),
            format!("socket,id=mon,fd={fd}"),
            "-mon".into(),
            "chardev=mon,mode=control".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let qemu = BareQemu::spawn(&args, &[fd]);
        drop(theirs);
        (qemu, ours)
    }

    /// Waits for the process to exit by itself.
    ///
    /// # Panics
    /// When it has not exited within `timeout`, or waiting fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on QEMU") {
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
