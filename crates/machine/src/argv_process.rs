//! QEMU started from a command line built elsewhere (e.g. by the Python `qemu.machine`
//! binding, whose subclasses compute the arguments), with the same containment as a
//! [`Machine`](crate::Machine): its own process group, death with its parent
//! (`PR_SET_PDEATHSIG`), only the named descriptors inherited, and a drop that kills and
//! reaps it.
//!
//! Blocking API, no async runtime needed. Waits use `pidfd_open` (exact wake-up on exit).
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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::shutdown::REAP_TIMEOUT;
use crate::spawn::signal_group;

/// Most spawner threads kept (each lives as long as the process: see [`spawn_on_keeper`]).
const MAX_SPAWNERS: usize = 32;

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
    /// Becomes readable when the process exits (`pidfd_open`); None on kernels without it.
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

type SpawnJob = (std::process::Command, mpsc::Sender<io::Result<Child>>);

/// Idle spawner threads, each waiting for one job.
fn idle_spawners() -> &'static Mutex<Vec<mpsc::Sender<SpawnJob>>> {
    static IDLE: OnceLock<Mutex<Vec<mpsc::Sender<SpawnJob>>>> = OnceLock::new();
    IDLE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Spawns `command` on a thread that lives as long as the process: the kernel ties
/// `PR_SET_PDEATHSIG` to the thread that forked, so a short-lived caller thread would
/// take its QEMU with it. Unlike the machine's single spawner, several keeper threads
/// (up to [`MAX_SPAWNERS`], made as needed, never ended) fork at once, so a fleet
/// launched from many threads is not spawned one fork at a time.
fn spawn_on_keeper(command: std::process::Command) -> io::Result<Child> {
    let (reply, result) = mpsc::channel();
    let mut job = Some((command, reply));
    let idle = qmp::sync::lock_unpoisoned(idle_spawners()).pop();
    if let Some(keeper) = idle {
        match keeper.send(job.take().unwrap_or_else(|| unreachable!("taken once"))) {
            Ok(()) => {}
            Err(mpsc::SendError(back)) => job = Some(back),
        }
    }
    if let Some(job) = job {
        let (jobs, queue) = mpsc::channel::<SpawnJob>();
        let pending = Some(job);
        std::thread::Builder::new()
            .name("qemu-argv-spawner".into())
            .spawn(move || keeper(pending, queue, jobs))?;
    }
    result
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// A keeper thread: runs jobs, offering itself as idle after each (while there is room).
fn keeper(
    mut pending: Option<SpawnJob>,
    queue: mpsc::Receiver<SpawnJob>,
    me: mpsc::Sender<SpawnJob>,
) {
    loop {
        let (mut command, reply) = match pending.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let child = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command.spawn()))
            .unwrap_or_else(|_| Err(io::Error::other("spawning QEMU panicked")));
        drop(command);
        if let Err(mpsc::SendError(Ok(mut orphan))) = reply.send(child) {
            // The caller is gone: nobody owns this QEMU.
            signal_group(orphan.id(), Signal::SIGKILL);
            let _ = orphan.wait();
        }
        let mut idle = qmp::sync::lock_unpoisoned(idle_spawners());
        if idle.len() < MAX_SPAWNERS {
            idle.push(me.clone());
        }
        // Past the cap this thread stays, idle for good: its children must keep their
        // death signal's thread alive.
    }
}

/// `pidfd_open(2)`: a descriptor that polls readable once `pid` exits.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = nix::libc::pid_t::try_from(pid).ok()?;
    // SAFETY: a plain system call with integer arguments; the result is a new descriptor
    // we own, or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl ArgvProcess {
    /// Spawns `argv` (program first) with stdin from /dev/null, output per `output`, and
    /// `inherit` kept open in the child under their numbers (everything else that is
    /// close-on-exec stays closed, as usual), in a process group of its own, with
    /// `PR_SET_PDEATHSIG(SIGKILL)` armed.
    ///
    /// # Errors
    ///
    /// The spawn's error (e.g. `NotFound` for a missing program), `InvalidInput` for an
    /// empty `argv`.
    pub fn spawn(argv: &[String], inherit: &[RawFd], output: Output<'_>) -> io::Result<Self> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command line"))?;
        let mut command = std::process::Command::new(program);
        command.args(args).stdin(Stdio::null()).process_group(0);
        if let Output::File(log) = output {
            command.stdout(log.try_clone()?).stderr(log.try_clone()?);
        }
        let inherit = inherit.to_vec();
        let parent = nix::unistd::getpid();
        // SAFETY: between fork and exec the closure makes only async-signal-safe system
        // calls (prctl, getppid, fcntl) and allocates nothing: errors are raw errnos, and
        // `inherit` was built before the fork.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    // The parent died before the death signal was armed.
                    return Err(io::Error::from_raw_os_error(
                        nix::errno::Errno::ESRCH as i32,
                    ));
                }
                for fd in &inherit {
                    nix::fcntl::fcntl(
                        *fd,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )
                    .map_err(io::Error::from)?;
                }
                Ok(())
            });
        }
        let child = spawn_on_keeper(command)?;
        let pid = child.id();
        tracing::debug!(pid, "spawned QEMU from a given command line");
        Ok(ArgvProcess {
            child,
            pid,
            pidfd: pidfd_open(pid),
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
            match &self.pidfd {
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
        if !matches!(self.wait_timeout(REAP_TIMEOUT), Ok(Some(_))) {
            tracing::warn!(
                pid = self.pid,
                "QEMU not reaped within {REAP_TIMEOUT:?} of SIGKILL"
            );
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
    fn empty_argv_is_an_error() {
        let err = ArgvProcess::spawn(&[], &[], Output::Inherit).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
