//! Starting QEMU so that it can never outlive us, and stopping it.
//!
//! - Every QEMU (or wrapper) runs under a watchdog process of its own (see
//!   [`watchdog`](crate::watchdog)): the tokio [`Child`] is the watchdog, which exits as
//!   QEMU did once QEMU and everything it started are dead, and kills them all when the
//!   manager goes (even by SIGKILL) or asks ([`Link::kill_all`]).
//! - QEMU gets its own process group, so a wrapper and everything it started are signalled
//!   together; the watchdog is not in it (it must outlive what it contains).
//! - QEMU's `PR_SET_PDEATHSIG(SIGKILL)` points at the watchdog (single-threaded, so the
//!   kernel's tie of the death signal to the forking *thread* holds), and the watchdog
//!   watches its link, not a thread of ours: spawns run on tokio's blocking pool, several
//!   at once, on threads that may end afterwards.
//! - Only the descriptors meant for QEMU lose CLOEXEC, in the grandchild, between fork and
//!   exec; the watchdog closes all but its link.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A spawned QEMU under its watchdog.
#[derive(Debug)]
pub(crate) struct Contained {
    /// The watchdog: its exit status is QEMU's, reported once everything is dead.
    pub(crate) child: Child,
    /// QEMU's pid (or the wrapper's): the leader of its process group.
    pub(crate) pid: u32,
    /// The manager's end of the watchdog's link: closing it ends the VM.
    pub(crate) link: Link,
}

/// The manager's end of a watchdog's socketpair (close-on-exec, so no other child keeps
/// it). Dropping it (or the manager dying) makes the watchdog kill everything it contains.
#[derive(Debug)]
pub(crate) struct Link(OwnedFd);

impl Link {
    /// Asks the watchdog to SIGKILL QEMU and every descendant, then exit (as QEMU did,
    /// which is then "killed by SIGKILL"). Does not wait.
    pub(crate) fn kill_all(&self) {
        // Gone already, or a full buffer (a request is pending): nothing more to do.
        let _ = send(
            self.0.as_raw_fd(),
            b"k",
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        );
    }
}

/// Ends a contained process group at once: SIGKILL to the group, and the watchdog told.
pub(crate) fn kill_contained(pid: u32, link: &Link) {
    signal_group(pid, Signal::SIGKILL);
    link.kill_all();
}

/// A spawned child on its way to the caller: if nobody takes it (the caller's future was
/// dropped with the reply in flight), it is killed and reaped on a thread of its own.
struct Spawned(Option<Contained>);

impl Spawned {
    fn take(mut self) -> Contained {
        self.0.take().unwrap_or_else(|| unreachable!("taken once"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(contained) = self.0.take() {
            tracing::debug!(
                pid = contained.pid,
                "launch cancelled with QEMU spawned: killing it"
            );
            kill_contained(contained.pid, &contained.link);
            let (sender, receiver) = std::sync::mpsc::sync_channel(1);
            let reaper = std::thread::Builder::new()
                .name("qemu-reaper".into())
                .spawn(move || {
                    if let Ok(contained) = receiver.recv() {
                        reap_unclaimed(contained);
                    }
                });
            match reaper {
                Ok(_) => {
                    let _ = sender.send(contained);
                }
                // No thread to spare: reap here (it was killed, so this is short).
                Err(_) => reap_unclaimed(contained),
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
    /// The manager's end of the watchdog's link.
    link: OwnedFd,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// Forks the watchdog (which forks QEMU) and hands the result to the caller. Runs on a
/// blocking-pool thread: several launches fork at once, no async worker stalls in `fork`,
/// and nothing is tied to the thread (QEMU's death signal points at its watchdog, and the
/// watchdog watches its link, not this thread), so it may end afterwards.
fn fork_contained(request: SpawnRequest) {
    let mut command = tokio::process::Command::from(request.command);
    let child = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command.spawn()))
        .unwrap_or_else(|_| Err(io::Error::other("spawning QEMU panicked")));
    // The child has its copies now (or never will): ours must not stay open.
    drop(request.child_fds);
    let contained = child.and_then(|child| contain(child, request.link));
    if let Err(Ok(mut spawned)) = request.reply.send(contained.map(|c| Spawned(Some(c)))) {
        // The launch was cancelled while we spawned: nobody owns this QEMU.
        if let Some(contained) = spawned.0.take() {
            reap_unclaimed(contained);
        }
    }
}

/// Spawns `argv` with stdin from /dev/null, stdout and stderr into `log`, and `child_fds`
/// and `also_inherit` kept open under their numbers. `child_fds` are closed here once the
/// child has them.
pub(crate) async fn spawn(
    argv: &[String],
    child_fds: Vec<OwnedFd>,
    also_inherit: &[RawFd],
    log: &File,
) -> io::Result<Contained> {
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

/// Spawns `command` (its stdio as set by the caller) on a blocking-pool thread, under a
/// watchdog, in a process group of its own and with the death signal armed; `inherit`
/// (among them `child_fds`, closed here once the child has them) keep their numbers in the
/// child.
pub(crate) async fn spawn_command(
    mut command: std::process::Command,
    mut child_fds: Vec<OwnedFd>,
    inherit: Vec<RawFd>,
) -> io::Result<Contained> {
    // The watchdog's group, away from ours (a terminal's ^C must not reach it).
    command.process_group(0);
    let (link, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Above the standard streams, which the child's stdio setup overwrites.
    let theirs = above_stdio(theirs)?;
    let watchdog_end = theirs.as_raw_fd();
    // Kept open until the fork is done, closed by the spawner after it.
    child_fds.push(theirs);
    // SAFETY: `watchdog::split` runs in the child between fork and exec, as it requires,
    // with `watchdog_end` open there (it is in `child_fds`, open until the fork is done);
    // it makes only async-signal-safe system calls and allocates nothing (`inherit` was
    // built before the fork; errors are raw errnos).
    unsafe {
        command.pre_exec(move || crate::watchdog::split(watchdog_end, &inherit));
    }
    let (reply, child) = oneshot::channel();
    let request = SpawnRequest {
        command,
        child_fds,
        link,
        reply,
    };
    Handle::current().spawn_blocking(move || fork_contained(request));
    // Cancel-safe: a child in flight when this future is dropped dies with its `Spawned`.
    child
        .await
        .map_err(|_| io::Error::other("the runtime dropped the spawn (shutting down?)"))?
        .map(Spawned::take)
}

/// `fd` moved to a number above 2 (close-on-exec) if it has one of the standard streams'
/// numbers (the manager runs with one closed): the child's stdio setup would overwrite it.
/// For every descriptor a child inherits under its number.
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
}

/// Reads the pid the watchdog reported on its link: it sends it before it closes its copy
/// of std's exec-error pipe, so it is there once `spawn` has returned.
fn contain(mut child: Child, link: OwnedFd) -> io::Result<Contained> {
    let mut pid = [0u8; 4];
    let got = recv(link.as_raw_fd(), &mut pid, MsgFlags::MSG_DONTWAIT);
    let pid = u32::from_ne_bytes(pid);
    if got == Ok(4) && pid > 0 {
        return Ok(Contained {
            child,
            pid,
            link: Link(link),
        });
    }
    // Closing the link makes the watchdog kill what it has and exit; reap it.
    drop(link);
    if !reap_child_within(&mut child, UNCLAIMED_REAP_TIMEOUT) {
        let _ = child.start_kill();
        reap_child_within(&mut child, UNCLAIMED_REAP_TIMEOUT);
    }
    Err(io::Error::other(format!(
        "the watchdog did not report QEMU's pid ({got:?})"
    )))
}

/// How long a child nobody claimed is waited for after its kill.
const UNCLAIMED_REAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Kills and reaps (bounded) a child whose launch future was dropped during the spawn.
fn reap_unclaimed(mut contained: Contained) {
    tracing::debug!(
        pid = contained.pid,
        "launch cancelled during spawn: killing QEMU"
    );
    kill_contained(contained.pid, &contained.link);
    reap_child_within(&mut contained.child, UNCLAIMED_REAP_TIMEOUT);
}

/// Waits (blocking, at most `timeout`) until `child` is reaped; false if it was not. For
/// drops and cancelled launches, where there is no runtime to await on.
pub(crate) fn reap_child_within(child: &mut Child, timeout: std::time::Duration) -> bool {
    let deadline = crate::deadline::std_deadline_after(timeout);
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
    false
}

/// Sends `signal` to QEMU's whole process group (QEMU, or its wrapper and all it started).
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    // 0 would mean our own group.
    if let Ok(pid @ 1..) = i32::try_from(pid) {
        // ESRCH (already gone) is what we want anyway.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test -p qemu-machine --lib watchdog_spawn_cost -- --ignored --nocapture`:
    /// spawn-to-reaped of `/bin/true`, under the watchdog and without it, interleaved so
    /// that the host's load hits both alike; prints the medians.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn watchdog_spawn_cost() {
        const ROUNDS: usize = 200;
        let (mut contained, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let start = std::time::Instant::now();
            let mut command = std::process::Command::new("true");
            command.stdin(Stdio::null());
            let mut spawned = spawn_command(command, Vec::new(), Vec::new())
                .await
                .unwrap();
            assert!(spawned.child.wait().await.unwrap().success());
            contained.push(start.elapsed());

            let start = std::time::Instant::now();
            let mut command = tokio::process::Command::new("true");
            command.stdin(Stdio::null()).process_group(0);
            assert!(command.status().await.unwrap().success());
            plain.push(start.elapsed());
        }
        contained.sort();
        plain.sort();
        let median = |v: &[std::time::Duration]| v[v.len() / 2].as_secs_f64() * 1e3;
        println!(
            "spawn → exit → reaped of `true`, median of {ROUNDS}: watchdog {:.3} ms, plain {:.3} ms",
            median(&contained),
            median(&plain)
        );
    }
}
