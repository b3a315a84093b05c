//! QEMU started from a command line built elsewhere (e.g. by the Python `qemu.machine`
//! binding, whose subclasses compute the arguments), with the same containment as a
//! [`Machine`](crate::Machine): spawned by the same spawner, under a per-VM watchdog that
//! kills QEMU, its process group and every descendant when QEMU exits, when asked, or when
//! this process dies (even by SIGKILL); the named descriptors inherited under their
//! numbers (and, as with Python's `Popen(close_fds=False)`, any the caller left without
//! close-on-exec: Rust opens everything close-on-exec); a drop that kills and reaps it.
//!
//! Blocking API, no runtime needed: the spawn blocks until QEMU has exec'd (about a
//! millisecond), waits poll the watchdog's pidfd (it exits once everything is dead).
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
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::shutdown::REAP_TIMEOUT;
use crate::spawn::{kill_contained, signal_group, spawn_here, ChildIo, Contained, Program};

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
    contained: Contained,
    status: Option<ExitStatus>,
}

impl ArgvProcess {
    /// Spawns `argv` (program first) with stdin from /dev/null, output per `output`, and
    /// `inherit` kept open in the child under their numbers (everything else that is
    /// close-on-exec stays closed, as usual), in a process group of its own under its
    /// watchdog (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// The spawn's error (e.g. `NotFound` for a missing program), `InvalidInput` for an
    /// empty `argv` (or one with a NUL byte).
    pub fn spawn(argv: &[String], inherit: &[RawFd], output: Output<'_>) -> io::Result<Self> {
        if argv.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty command line",
            ));
        }
        let mut program = Program::new(argv);
        if let Output::File(log) = output {
            program = program
                .stdout(ChildIo::Fd(log.try_clone()?.into()))
                .stderr(ChildIo::Fd(log.try_clone()?.into()));
        }
        let contained = spawn_here(program, Vec::new(), inherit.to_vec())?;
        tracing::debug!(
            pid = contained.pid,
            "spawned QEMU from a given command line"
        );
        Ok(ArgvProcess {
            contained,
            status: None,
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.contained.pid
    }

    /// The exit status if it has exited (reaping it), without waiting.
    ///
    /// # Errors
    ///
    /// When `waitpid` fails.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.contained.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for it to exit; `None` when it is still running then.
    ///
    /// # Errors
    ///
    /// When `waitpid` fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = crate::deadline::std_deadline_after(timeout);
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.contained.child.pidfd() {
                Some(pidfd) => {
                    let mut poll = nix::libc::pollfd {
                        fd: pidfd.as_raw_fd(),
                        events: nix::libc::POLLIN,
                        revents: 0,
                    };
                    let ms = nix::libc::c_int::try_from(left.as_millis().max(1))
                        .unwrap_or(nix::libc::c_int::MAX);
                    // SAFETY: one valid pollfd, for the duration of the call.
                    unsafe { nix::libc::poll(&mut poll, 1, ms) };
                }
                None => {
                    // No pidfd (old kernel): short naps, growing to 10 ms.
                    std::thread::sleep(nap.min(left));
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    /// Sends `signal` to its whole process group, unless it has been reaped already.
    pub fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            signal_group(self.contained.pid, signal);
        }
    }

    /// SIGTERM to the group.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL to the group, and the watchdog told to kill every descendant too.
    pub fn kill(&self) {
        if self.status.is_none() {
            kill_contained(self.contained.pid, &self.contained.link);
        }
    }
}

impl Drop for ArgvProcess {
    /// Kills the group and reaps QEMU (bounded), unless it was reaped already.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let pid = self.contained.pid;
        tracing::debug!(pid, "dropping a running QEMU: killing it");
        self.kill();
        if !matches!(self.wait_timeout(REAP_TIMEOUT), Ok(Some(_))) {
            tracing::warn!(pid, "QEMU not reaped within {REAP_TIMEOUT:?} of SIGKILL");
        }
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
        // Reaped by the drop: nothing of the group is left to signal.
        let group = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
        assert!(nix::sys::signal::killpg(group, None).is_err());
    }

    #[test]
    fn what_a_wrapper_started_outside_its_group_dies_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pid");
        let script = format!("setsid sleep 100 & echo $! > {}; wait", file.display());
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), script];
        let p = ArgvProcess::spawn(&argv, &[], Output::Inherit).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let escaped = loop {
            if let Ok(pid) = std::fs::read_to_string(&file) {
                if let Ok(pid) = pid.trim().parse::<u32>() {
                    break pid;
                }
            }
            assert!(Instant::now() < deadline, "the wrapper wrote no pid");
            std::thread::sleep(Duration::from_millis(5));
        };
        drop(p);
        // Reaped by the watchdog before it exited, and the drop waited for the watchdog.
        assert!(!std::path::Path::new(&format!("/proc/{escaped}")).exists());
    }

    #[test]
    fn it_works_inside_a_runtime_too() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let argv: Vec<String> = vec!["true".into()];
        let mut p = runtime
            .block_on(async { ArgvProcess::spawn(&argv, &[], Output::Inherit) })
            .expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(10)).expect("wait");
        assert!(status.is_some_and(|s| s.success()));
    }

    #[test]
    fn empty_argv_is_an_error() {
        let err = ArgvProcess::spawn(&[], &[], Output::Inherit).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
