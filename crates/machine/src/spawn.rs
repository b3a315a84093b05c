//! Starting QEMU so that it can never outlive us, and stopping it.
//!
//! - QEMU gets its own process group, so a wrapper and everything it started are signalled
//!   together.
//! - `PR_SET_PDEATHSIG(SIGKILL)` kills QEMU when its parent goes. The kernel ties that to the
//!   *thread* that forked, not the process, so every spawn happens on one thread that lives
//!   as long as the process (a short-lived caller thread would take its QEMU with it).
//! - Only the descriptors meant for QEMU lose CLOEXEC, in the child, between fork and exec.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

enum Request {
    Spawn(SpawnRequest),
    /// A child spawned for a launch that was cancelled after the reply was sent: its group
    /// was killed; reap it here.
    Reap(Child),
}

/// A spawned child on its way to the caller: if nobody takes it (the caller's future was
/// dropped with the reply in flight), its group is killed and the spawner reaps it.
struct Spawned(Option<Child>);

impl Spawned {
    fn take(mut self) -> Child {
        self.0.take().unwrap_or_else(|| unreachable!("taken once"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            if let Some(pid) = child.id() {
                tracing::debug!(pid, "launch cancelled with QEMU spawned: killing it");
                signal_group(pid, Signal::SIGKILL);
            }
            if let Ok(spawner) = spawner() {
                let _ = spawner.send(Request::Reap(child));
            }
        }
    }
}

struct SpawnRequest {
    command: std::process::Command,
    /// The child's ends of its sockets: open until the fork is done, so that their numbers,
    /// named on the command line and in `pre_exec`, cannot be reused meanwhile (a launch
    /// future dropped during the spawn would otherwise close them under the fork).
    child_fds: Vec<OwnedFd>,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

fn spawner() -> io::Result<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<Option<mpsc::Sender<Request>>>> = OnceLock::new();
    let slot = SPAWNER.get_or_init(|| Mutex::new(None));
    let mut slot = qmp::sync::lock_unpoisoned(slot);
    if let Some(sender) = slot.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, requests) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("qemu-spawner".into())
        .spawn(move || {
            for request in requests {
                let request = match request {
                    Request::Spawn(request) => request,
                    Request::Reap(child) => {
                        reap_unclaimed(child);
                        continue;
                    }
                };
                let _runtime = request.runtime.enter();
                // This thread must never end: every QEMU it forked dies with it (the death
                // signal is tied to the forking thread), so a panic in `spawn` is an error.
                let mut command = tokio::process::Command::from(request.command);
                let child =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command.spawn()))
                        .unwrap_or_else(|_| Err(io::Error::other("spawning QEMU panicked")));
                // The child has its copies now (or never will): ours must not stay open.
                drop(request.child_fds);
                if let Err(Ok(mut spawned)) = request.reply.send(child.map(|c| Spawned(Some(c)))) {
                    // The launch was cancelled while we spawned: nobody owns this QEMU.
                    if let Some(child) = spawned.0.take() {
                        reap_unclaimed(child);
                    }
                }
            }
        })?;
    *slot = Some(sender.clone());
    Ok(sender)
}

/// Spawns `argv` with stdin from /dev/null, stdout and stderr into `log`, and `child_fds`
/// and `also_inherit` kept open under their numbers. `child_fds` are closed here once the
/// child has them.
pub(crate) async fn spawn(
    argv: &[String],
    child_fds: Vec<OwnedFd>,
    also_inherit: &[RawFd],
    log: &File,
) -> io::Result<Child> {
    let inherit: Vec<RawFd> = child_fds
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain(also_inherit.iter().copied())
        .collect();
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command line"))?;
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    spawn_command(command, child_fds, inherit).await
}

/// Spawns `command` (its stdio as set by the caller) on the spawner thread, in a process
/// group of its own and with the death signal armed; `inherit` (among them `child_fds`,
/// closed here once the child has them) keep their numbers in the child.
pub(crate) async fn spawn_command(
    mut command: std::process::Command,
    child_fds: Vec<OwnedFd>,
    inherit: Vec<RawFd>,
) -> io::Result<Child> {
    command.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (prctl, getppid, fcntl) and allocates nothing, on its error paths too: every error
    // is a raw errno (`io::Error::from(Errno)` and `from_raw_os_error` store the number
    // inline), and `inherit` was built before the fork.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            if nix::unistd::getppid() != parent {
                // The parent died before the death signal was armed; ESRCH: it is gone.
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
    let (reply, child) = oneshot::channel();
    spawner()?
        .send(Request::Spawn(SpawnRequest {
            command,
            child_fds,
            runtime: Handle::current(),
            reply,
        }))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    // Cancel-safe: a child in flight when this future is dropped dies with its `Spawned`.
    child
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
        .map(Spawned::take)
}

/// Kills and reaps (bounded) a child whose launch future was dropped during the spawn.
fn reap_unclaimed(mut child: Child) {
    let Some(pid) = child.id() else {
        return;
    };
    tracing::debug!(pid, "launch cancelled during spawn: killing QEMU");
    signal_group(pid, Signal::SIGKILL);
    let deadline = crate::deadline::std_deadline_after(std::time::Duration::from_secs(10));
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

/// Sends `signal` to QEMU's whole process group (QEMU, or its wrapper and all it started).
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    // 0 would mean our own group.
    if let Ok(pid @ 1..) = i32::try_from(pid) {
        // ESRCH (already gone) is what we want anyway.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// True while any process of the group is alive (zombies included until reaped).
pub(crate) fn group_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| pid > 0 && killpg(Pid::from_raw(pid), None).is_ok())
}
