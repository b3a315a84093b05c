//! Starting QEMU so that it can never outlive us, and stopping it.
//!
//! - Every QEMU (or wrapper) runs under a watchdog process of its own (see
//!   [`watchdog`](crate::watchdog)), cloned into the manager's memory (no copy, so a
//!   launch costs the same whatever the manager's size): the [`WatchdogChild`] reports
//!   QEMU's exit status once QEMU and everything it started are dead; the watchdog kills
//!   them all when the manager goes (even by SIGKILL) or asks ([`Link::kill_all`]).
//! - QEMU gets its own process group, so a wrapper and everything it started are signalled
//!   together; the watchdog is not in it (it must outlive what it contains).
//! - QEMU's `PR_SET_PDEATHSIG(SIGKILL)` points at the watchdog (single-threaded, so the
//!   kernel's tie of the death signal to the forking *thread* holds), and the watchdog
//!   watches its link, not a thread of ours: spawns run on tokio's blocking pool, several
//!   at once, on threads that may end afterwards.
//! - Only the descriptors meant for QEMU lose CLOEXEC, in QEMU's child before its exec;
//!   the watchdog closes all but its link.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::time::Duration;

use nix::libc::{self, c_int, c_void};
use nix::sys::signal::{killpg, pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::watchdog::{watchdog_main, Plan};
use crate::watchdog_child::StackMapping;
pub(crate) use crate::watchdog_child::WatchdogChild;

/// A spawned QEMU under its watchdog.
#[derive(Debug)]
pub(crate) struct Contained {
    /// The watchdog: its exit status is QEMU's, reported once everything is dead.
    pub(crate) child: WatchdogChild,
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
    /// Asks the watchdog to SIGKILL QEMU and every descendant, then exit (QEMU then counts
    /// as "killed by SIGKILL"). Does not wait.
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

/// Where one of the child's standard streams comes from or goes to.
#[derive(Debug)]
pub(crate) enum ChildIo {
    /// `/dev/null`.
    Null,
    /// The manager's own.
    Inherit,
    /// This descriptor (a file, a pipe's end).
    Fd(OwnedFd),
}

/// What to run under a watchdog.
#[derive(Debug)]
pub(crate) struct Program {
    argv: Vec<OsString>,
    stdio: [ChildIo; 3],
    read_only: Option<PathBuf>,
}

impl Program {
    /// `argv` (program first), stdin from `/dev/null`, stdout and stderr the manager's.
    pub(crate) fn new<S: Into<OsString>>(argv: impl IntoIterator<Item = S>) -> Self {
        Program {
            argv: argv.into_iter().map(Into::into).collect(),
            stdio: [ChildIo::Null, ChildIo::Inherit, ChildIo::Inherit],
            read_only: None,
        }
    }

    /// Where stdout goes.
    pub(crate) fn stdout(mut self, io: ChildIo) -> Self {
        self.stdio[1] = io;
        self
    }

    /// Where stderr goes.
    pub(crate) fn stderr(mut self, io: ChildIo) -> Self {
        self.stdio[2] = io;
        self
    }

    /// The program sees `dir` read-only (a bind mount in a mount namespace of its own and
    /// its watchdog's; needs CAP_SYS_ADMIN).
    pub(crate) fn read_only(mut self, dir: &Path) -> Self {
        self.read_only = Some(dir.to_path_buf());
        self
    }
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

/// The plan, on its way to the blocking-pool thread that clones the watchdog.
struct SendPlan(Box<Plan>);

// SAFETY: the plan's raw pointers point into its own `strings`, which move with it.
unsafe impl Send for SendPlan {}

struct SpawnRequest {
    plan: SendPlan,
    /// Every descriptor the watchdog must get a copy of (the child's sockets, its stdio,
    /// the watchdog's end of the link): open until the clone is done, so that their
    /// numbers, named in the plan and on the command line, cannot be reused meanwhile (a
    /// launch future dropped during the spawn would otherwise close them under it).
    child_fds: Vec<OwnedFd>,
    /// The manager's end of the watchdog's link.
    link: OwnedFd,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// How long the watchdog may take to report QEMU's pid (it waits only for QEMU's exec).
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Clones the watchdog (which starts QEMU) and hands the result to the caller. Runs on a
/// blocking-pool thread: several launches start at once, no async worker stalls, and
/// nothing is tied to the thread (QEMU's death signal points at its watchdog, and the
/// watchdog watches its link, not this thread), so it may end afterwards.
fn start_contained(request: SpawnRequest) {
    let SpawnRequest {
        plan,
        child_fds,
        link,
        reply,
    } = request;
    let contained = clone_watchdog(plan.0, child_fds, link);
    if let Err(Ok(mut spawned)) = reply.send(contained.map(|c| Spawned(Some(c)))) {
        // The launch was cancelled while we spawned: nobody owns this QEMU.
        if let Some(contained) = spawned.0.take() {
            reap_unclaimed(contained);
        }
    }
}

fn clone_watchdog(
    mut plan: Box<Plan>,
    child_fds: Vec<OwnedFd>,
    link: OwnedFd,
) -> io::Result<Contained> {
    let stack = StackMapping::new()?;
    plan.qemu_stack = stack.qemu_top();
    plan.status = stack.status();
    let plan = Box::into_raw(plan);
    let mut pidfd: c_int = -1;
    // As posix_spawn does: every signal blocked while the watchdog starts, so that none
    // runs one of our handlers in it (in our memory) before it has reset them all.
    let mut ours = SigSet::empty();
    let _ = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut ours),
    );
    // SAFETY: the watchdog runs `watchdog_main` on its own stack (mapped until it is
    // reaped: the WatchdogChild owns it), with the plan alive and unchanged until its
    // report (freed below only after the report, or once the watchdog is reaped).
    // CLONE_PIDFD stores a close-on-exec pidfd in `pidfd`.
    let pid = unsafe {
        libc::clone(
            watchdog_main,
            stack.watchdog_top() as *mut c_void,
            libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            plan.cast(),
            &mut pidfd as *mut c_int,
        )
    };
    let error = io::Error::last_os_error();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&ours), None);
    if pid < 0 {
        // SAFETY: no watchdog runs: the plan is ours again.
        drop(unsafe { Box::from_raw(plan) });
        return Err(error);
    }
    // The watchdog has its copies now: ours must not stay open.
    drop(child_fds);
    // SAFETY: CLONE_PIDFD returned a new descriptor that nothing else owns.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    let mut child = WatchdogChild::new(pid, pidfd, stack);
    match read_report(&link) {
        Ok((qemu, 0)) if qemu > 0 => {
            // SAFETY: the watchdog reads the plan only before its report.
            drop(unsafe { Box::from_raw(plan) });
            Ok(Contained {
                child,
                pid: qemu as u32,
                link: Link(link),
            })
        }
        outcome => {
            // Closing the link makes a watchdog that started QEMU kill it; one that failed
            // exits by itself.
            drop(link);
            child.start_kill();
            if reap_child_within(&mut child, UNCLAIMED_REAP_TIMEOUT) {
                // SAFETY: the watchdog is gone: the plan is ours again.
                drop(unsafe { Box::from_raw(plan) });
            }
            // Else the plan is leaked: a watchdog that is still there may read it.
            Err(match outcome {
                Ok((_, errno @ 1..)) => io::Error::from_raw_os_error(errno),
                Ok(report) => io::Error::other(format!("the watchdog reported {report:?}")),
                Err(e) => e,
            })
        }
    }
}

/// Reads the watchdog's report: QEMU's pid and 0, or 0 and the errno of what failed.
fn read_report(link: &OwnedFd) -> io::Result<(i32, i32)> {
    let ms = c_int::try_from(REPORT_TIMEOUT.as_millis()).unwrap_or(c_int::MAX);
    let mut fd = libc::pollfd {
        fd: link.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the watchdog did not report within {REPORT_TIMEOUT:?}"),
                ))
            }
            n if n > 0 => break,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(io::Error::last_os_error()),
        }
    }
    let mut report = [0u8; 8];
    let got = recv(link.as_raw_fd(), &mut report, MsgFlags::MSG_WAITALL)?;
    if got != report.len() {
        return Err(io::Error::other(
            "the watchdog exited without reporting QEMU's pid",
        ));
    }
    let [a, b, c, d, e, f, g, h] = report;
    Ok((
        i32::from_ne_bytes([a, b, c, d]),
        i32::from_ne_bytes([e, f, g, h]),
    ))
}

/// Spawns `argv` with stdin from /dev/null, stdout and stderr into `log`, and `child_fds`
/// and `also_inherit` kept open under their numbers. `child_fds` are closed here once the
/// child has them.
pub(crate) async fn spawn(
    argv: &[String],
    child_fds: Vec<OwnedFd>,
    also_inherit: &[RawFd],
    log: &std::fs::File,
) -> io::Result<Contained> {
    let inherit: Vec<RawFd> = child_fds
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain(also_inherit.iter().copied())
        .collect();
    let program = Program::new(argv)
        .stdout(ChildIo::Fd(log.try_clone()?.into()))
        .stderr(ChildIo::Fd(log.try_clone()?.into()));
    spawn_command(program, child_fds, inherit).await
}

/// Spawns `program` on a blocking-pool thread, under a watchdog, in a process group of its
/// own and with the death signal armed; `inherit` (among them `child_fds`, closed here once
/// the child has them) keep their numbers in the child.
pub(crate) async fn spawn_command(
    program: Program,
    child_fds: Vec<OwnedFd>,
    inherit: Vec<RawFd>,
) -> io::Result<Contained> {
    let (plan, child_fds, link) = prepare(program, child_fds, inherit)?;
    let (reply, child) = oneshot::channel();
    let request = SpawnRequest {
        plan: SendPlan(plan),
        child_fds,
        link,
        reply,
    };
    Handle::current().spawn_blocking(move || start_contained(request));
    // Cancel-safe: a child in flight when this future is dropped dies with its `Spawned`.
    child
        .await
        .map_err(|_| io::Error::other("the runtime dropped the spawn (shutting down?)"))?
        .map(Spawned::take)
}

/// [`spawn_command`] on this thread, blocking until QEMU has exec'd (for callers without a
/// runtime: nothing about the result needs one).
pub(crate) fn spawn_here(
    program: Program,
    child_fds: Vec<OwnedFd>,
    inherit: Vec<RawFd>,
) -> io::Result<Contained> {
    let (plan, child_fds, link) = prepare(program, child_fds, inherit)?;
    clone_watchdog(plan, child_fds, link)
}

/// The watchdog's plan, the descriptors it must get copies of (`child_fds`, its stdio, its
/// end of the link), and our end of the link.
fn prepare(
    program: Program,
    mut child_fds: Vec<OwnedFd>,
    inherit: Vec<RawFd>,
) -> io::Result<(Box<Plan>, Vec<OwnedFd>, OwnedFd)> {
    let (link, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Above the standard streams, which the watchdog's stdio setup overwrites.
    let theirs = above_stdio(theirs)?;
    let Program {
        argv,
        stdio,
        read_only,
    } = program;
    let mut stdio_fds = [-1; 3];
    for (slot, io) in stdio_fds.iter_mut().zip(stdio) {
        let fd = match io {
            ChildIo::Inherit => continue,
            ChildIo::Null => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?
                .into(),
            ChildIo::Fd(fd) => fd,
        };
        let fd = above_stdio(fd)?;
        *slot = fd.as_raw_fd();
        child_fds.push(fd);
    }
    let plan = plan(argv, stdio_fds, inherit, theirs.as_raw_fd(), read_only)?;
    // Kept open until the clone is done, closed after it.
    child_fds.push(theirs);
    Ok((plan, child_fds, link))
}

/// A C string of `bytes`; InvalidInput if they hold a NUL.
fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the command line or the environment",
        )
    })
}

/// Everything the watchdog needs, built before the clone: the program looked up in
/// `PATH`, `argv` and our environment as C arrays.
fn plan(
    argv: Vec<OsString>,
    stdio: [RawFd; 3],
    inherit: Vec<RawFd>,
    link: RawFd,
    read_only: Option<PathBuf>,
) -> io::Result<Box<Plan>> {
    let program = argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command line"))?;
    let path = c_string(
        find_program(program, std::env::var_os("PATH"))?
            .into_os_string()
            .into_vec(),
    )?;
    let args = argv.len();
    let mut strings = Vec::with_capacity(args + 64);
    for arg in argv {
        strings.push(c_string(arg.into_vec())?);
    }
    for (key, value) in std::env::vars_os() {
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        strings.push(c_string(entry)?);
    }
    let pointers = |range: &[CString]| {
        range
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let argv = pointers(&strings[..args]);
    let envp = pointers(&strings[args..]);
    let read_only = read_only
        .map(|dir| c_string(dir.into_os_string().into_vec()))
        .transpose()?;
    Ok(Box::new(Plan {
        link,
        stdio,
        inherit,
        path,
        argv,
        envp,
        _strings: strings,
        read_only,
        qemu_stack: 0,
        status: std::ptr::null(),
        exec_errno: AtomicI32::new(0),
        watchdog: AtomicI32::new(0),
    }))
}

/// `program` as `execvp` would find it: itself if it has a slash, else the first
/// executable file of that name in `path` (our `PATH`); as `execvp` (and so std's
/// `Command`), PermissionDenied (EACCES) when there is one of that name that cannot run (a
/// file without execute permission, a directory), else NotFound (ENOENT).
fn find_program(program: &std::ffi::OsStr, path: Option<OsString>) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = false;
    for candidate in std::env::split_paths(&path).map(|dir| dir.join(program)) {
        if candidate.is_file()
            && nix::unistd::access(candidate.as_path(), nix::unistd::AccessFlags::X_OK).is_ok()
        {
            return Ok(candidate);
        }
        denied |= candidate.exists();
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
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
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// How long a child nobody claimed is waited for after its kill.
const UNCLAIMED_REAP_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(crate) fn reap_child_within(child: &mut WatchdogChild, timeout: Duration) -> bool {
    let deadline = crate::deadline::std_deadline_after(timeout);
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
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

    /// `read_only` (virtiofsd's read-only shares): the watchdog, cloned into our memory,
    /// makes a mount namespace of its own; the program cannot write there, we still can.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_only_view_is_read_only_for_the_program_alone() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| {
            let file = dir.path().join(name);
            Program::new([
                "sh".into(),
                "-c".into(),
                format!("echo x > '{}'", file.display()),
            ])
            .stderr(ChildIo::Null)
        };
        let mut spawned = spawn_command(touch("ro").read_only(dir.path()), Vec::new(), Vec::new())
            .await
            .expect("a read-only view (needs CAP_SYS_ADMIN, as virtiofsd's sandbox does)");
        // sh's redirection failed (EROFS).
        assert!(!spawned.child.wait().await.unwrap().success());
        assert!(!dir.path().join("ro").exists());
        let mut spawned = spawn_command(touch("rw"), Vec::new(), Vec::new())
            .await
            .unwrap();
        assert!(spawned.child.wait().await.unwrap().success());
        assert!(dir.path().join("rw").exists());
        // Our own view was not touched.
        std::fs::write(dir.path().join("ours"), "x").unwrap();
    }

    #[test]
    fn a_program_in_path_that_cannot_run_is_permission_denied_as_with_std() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let runs = dir.path().join("runs");
        std::fs::write(&runs, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = || {
            let mut path = OsString::from("/nonexistent:");
            path.push(dir.path());
            Some(path)
        };
        for name in ["plain", "adir"] {
            let error = find_program(name.as_ref(), path()).unwrap_err();
            assert_eq!(
                error.kind(),
                io::ErrorKind::PermissionDenied,
                "{name}: {error}"
            );
        }
        let error = find_program("none".as_ref(), path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
        assert_eq!(find_program("runs".as_ref(), path()).unwrap(), runs);
        // An executable later in PATH wins over one that cannot run earlier, as with execvp.
        let mut path = path().unwrap();
        path.push(":/bin");
        std::fs::write(dir.path().join("sh"), "").unwrap();
        assert_eq!(
            find_program("sh".as_ref(), Some(path)).unwrap(),
            Path::new("/bin/sh")
        );
    }

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
            let mut spawned = spawn_command(Program::new(["true"]), Vec::new(), Vec::new())
                .await
                .unwrap();
            assert!(spawned.child.wait().await.unwrap().success());
            contained.push(start.elapsed());

            let start = std::time::Instant::now();
            let mut command = tokio::process::Command::new("true");
            command.stdin(std::process::Stdio::null()).process_group(0);
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
