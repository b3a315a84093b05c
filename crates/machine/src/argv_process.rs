//! QEMU started from a command line built elsewhere (e.g. by the Python `qemu.machine`
//! binding, whose subclasses compute the arguments), with the same containment as a
//! [`Machine`](crate::Machine): its own process group, death with its parent
//! (`PR_SET_PDEATHSIG`), only the named descriptors inherited, and a drop that kills and
//! reaps it.
//!
//! Blocking API (it runs on the QMP crate's shared I/O runtime); must not be called from
//! inside an async runtime.
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_machine::argv_process::{ArgvProcess, Output};
//!
//! let argv = ["qemu-system-x86_64", "-machine", "none", "-display", "none"];
//! let mut qemu = ArgvProcess::spawn(&argv.map(String::from), &[], Output::Inherit)?;
//! qemu.terminate();
//! let status = qemu.wait_timeout(Duration::from_secs(10))?;
//! assert!(status.is_some());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Child;

use crate::shutdown::REAP_TIMEOUT;
use crate::spawn::{signal_group, spawn_command};

/// Where QEMU's stdout and stderr go.
#[derive(Debug)]
pub enum Output<'a> {
    /// Both into this file (QEMU's combined output, as the Python seed logs it).
    File(&'a File),
    /// Both to our own stdout and stderr.
    Inherit,
}

/// A QEMU process (or its wrapper) started from a given command line; see the
/// [module docs](self).
#[derive(Debug)]
pub struct ArgvProcess {
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
}

fn blocking<F: std::future::Future>(future: F) -> io::Result<F::Output> {
    qmp::blocking::block_on(future).map_err(io::Error::other)
}

impl ArgvProcess {
    /// Spawns `argv` (program first) with stdin from /dev/null, output per `output`, and
    /// `inherit` kept open in the child under their numbers (everything else that is
    /// close-on-exec stays closed, as usual).
    ///
    /// # Errors
    ///
    /// The spawn's error (e.g. `NotFound` for a missing program), `InvalidInput` for an
    /// empty `argv`, or an error of the shared I/O runtime.
    pub fn spawn(argv: &[String], inherit: &[RawFd], output: Output<'_>) -> io::Result<Self> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command line"))?;
        let mut command = std::process::Command::new(program);
        command.args(args).stdin(Stdio::null());
        if let Output::File(log) = output {
            command.stdout(log.try_clone()?).stderr(log.try_clone()?);
        }
        let inherit = inherit.to_vec();
        let child = blocking(spawn_command(command, Vec::new(), inherit))??;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the spawned QEMU has no pid"))?;
        tracing::debug!(pid, "spawned QEMU from a given command line");
        Ok(ArgvProcess {
            child,
            pid,
            status: None,
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if it has exited (reaping it), without waiting.
    ///
    /// # Errors
    ///
    /// When `waitpid` fails.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for it to exit; `None` when it is still running then.
    ///
    /// # Errors
    ///
    /// When `waitpid` fails, or the shared I/O runtime does.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let child = &mut self.child;
        // The timer must be made inside the runtime: an async block defers it.
        match blocking(async move { tokio::time::timeout(timeout, child.wait()).await })? {
            Ok(status) => {
                self.status = Some(status?);
                Ok(self.status)
            }
            Err(_) => Ok(None),
        }
    }

    /// Sends `signal` to its whole process group, unless it has been reaped already.
    pub fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            signal_group(self.pid, signal);
        }
    }

    /// SIGTERM to the group.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL to the group.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }
}

impl Drop for ArgvProcess {
    /// Kills the group and reaps QEMU (bounded), unless it was reaped already.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        tracing::debug!(pid = self.pid, "dropping a running QEMU: killing it");
        signal_group(self.pid, Signal::SIGKILL);
        let deadline = crate::deadline::std_deadline_after(REAP_TIMEOUT);
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        tracing::warn!(
            pid = self.pid,
            "QEMU not reaped within {REAP_TIMEOUT:?} of SIGKILL"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawns_waits_and_kills_with_drop() {
        let argv: Vec<String> = ["sh", "-c", "exit 3"].map(String::from).to_vec();
        let mut p = ArgvProcess::spawn(&argv, &[], Output::Inherit).expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(10)).expect("wait");
        assert_eq!(status.and_then(|s| s.code()), Some(3));

        let argv: Vec<String> = ["sleep", "100"].map(String::from).to_vec();
        let mut p = ArgvProcess::spawn(&argv, &[], Output::Inherit).expect("spawn");
        let pid = p.pid();
        assert!(p
            .wait_timeout(Duration::from_millis(50))
            .expect("wait")
            .is_none());
        drop(p);
        assert!(!crate::spawn::group_alive(pid));
    }

    #[test]
    fn empty_argv_is_an_error() {
        let err = ArgvProcess::spawn(&[], &[], Output::Inherit).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
