//! The manager's handle on a watchdog it cloned (see [`watchdog`](crate::watchdog)): what
//! `tokio::process::Child` is for a forked child, plus the memory the watchdog runs on.
//!
//! The watchdog shares the manager's memory, so its stack is a mapping of ours
//! ([`StackMapping`]), which must stay mapped until the watchdog is reaped: the handle owns
//! it and unmaps it then (or hands both to a thread that reaps, when dropped early). The
//! watchdog leaves QEMU's wait status in that mapping's status slot: the handle reports it
//! as the exit status (the watchdog itself just exits 0, never re-raising a signal).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::libc::{self, c_int, c_void, pid_t};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::watchdog::{KILLED, NO_STATUS};

/// The watchdog's stack (deep enough for its `/proc` scans in a debug build).
const WATCHDOG_STACK: usize = 192 * 1024;
/// QEMU's child's stack, until its exec.
const QEMU_STACK: usize = 64 * 1024;
const PAGE: usize = 4096;

/// An anonymous mapping laid out as `[status page][guard][QEMU's child's stack][guard]
/// [the watchdog's stack]` (stacks grow down, so each guard page catches an overflow).
#[derive(Debug)]
pub(crate) struct StackMapping {
    base: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the status slot is an atomic.
unsafe impl Send for StackMapping {}
// SAFETY: as above; shared access reads only addresses and the atomic slot.
unsafe impl Sync for StackMapping {}

impl StackMapping {
    /// Maps it (pages are only committed when touched), with the guard pages inaccessible
    /// and the status slot set to "no status yet".
    pub(crate) fn new() -> io::Result<Self> {
        let len = PAGE + PAGE + QEMU_STACK + PAGE + WATCHDOG_STACK;
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = StackMapping {
            base: NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        };
        for guard in [PAGE, PAGE + PAGE + QEMU_STACK] {
            // SAFETY: a page inside our own mapping.
            if unsafe { libc::mprotect(mapping.at(guard), PAGE, libc::PROT_NONE) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        mapping.status().store(NO_STATUS, Ordering::SeqCst);
        Ok(mapping)
    }

    fn at(&self, offset: usize) -> *mut c_void {
        // SAFETY: callers pass offsets within the mapping (or its end).
        unsafe { self.base.as_ptr().cast::<u8>().add(offset).cast() }
    }

    /// Where the watchdog leaves QEMU's wait status.
    pub(crate) fn status(&self) -> &AtomicI32 {
        // SAFETY: the first page is readable, writable and page-aligned, and lives as long
        // as `self`; an AtomicI32 has no invalid bit patterns.
        unsafe { &*self.base.as_ptr().cast::<AtomicI32>() }
    }

    /// The top of QEMU's child's stack.
    pub(crate) fn qemu_top(&self) -> usize {
        self.at(PAGE + PAGE + QEMU_STACK) as usize
    }

    /// The top of the watchdog's stack.
    pub(crate) fn watchdog_top(&self) -> usize {
        self.at(self.len) as usize
    }
}

impl Drop for StackMapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which no live process runs on any more (the handle
        // drops it only once the watchdog is reaped, or was never started).
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

/// A cloned watchdog: wait for it, kill it; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct WatchdogChild {
    pid: pid_t,
    /// Readable once the watchdog has exited (`CLONE_PIDFD`); None on kernels before 5.2.
    pidfd: Option<OwnedFd>,
    /// Unmapped once the watchdog is reaped.
    stack: Option<StackMapping>,
    status: Option<ExitStatus>,
}

/// A raw descriptor for `AsyncFd`, which the handle owns elsewhere.
struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl WatchdogChild {
    /// The handle on the watchdog `pid`, running on `stack`.
    pub(crate) fn new(pid: pid_t, pidfd: Option<OwnedFd>, stack: StackMapping) -> Self {
        WatchdogChild {
            pid,
            pidfd,
            stack: Some(stack),
            status: None,
        }
    }

    /// A descriptor that polls readable once the watchdog has exited (None without pidfds).
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| {
            use std::os::fd::AsFd;
            fd.as_fd()
        })
    }

    /// The VM's exit status if the watchdog has exited (reaping it), without waiting.
    ///
    /// # Errors
    ///
    /// When `waitpid` fails other than with ECHILD (a host that ignores SIGCHLD has its
    /// children reaped by the kernel: then the status slot alone tells).
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut raw: c_int = 0;
        // SAFETY: waitpid on our own child, writing its status on our stack.
        let got = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
        let own = match got {
            0 => return Ok(None),
            pid if pid == self.pid => raw,
            _ => {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::ECHILD) {
                    return Err(error);
                }
                KILLED
            }
        };
        let slot = self
            .stack
            .as_ref()
            .map_or(NO_STATUS, |stack| stack.status().load(Ordering::SeqCst));
        // Killed before it could tell (by someone else): its own status is the truth.
        let status = if slot == NO_STATUS { own } else { slot };
        self.status = Some(ExitStatus::from_raw(status));
        self.stack = None;
        Ok(self.status)
    }

    /// Waits until the watchdog has exited and reaps it; the VM's exit status.
    ///
    /// # Errors
    ///
    /// As [`try_wait`](Self::try_wait), or registering the pidfd with the runtime.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &self.pidfd {
                Some(pidfd) => {
                    // SAFETY: the pidfd is ours and stays open (and the same) for as long as
                    // `ready` lives: both are borrowed from `self` for this iteration.
                    let ready = unsafe {
                        AsyncFd::register_with_interest(
                            Borrowed(pidfd.as_raw_fd()),
                            Interest::READABLE,
                        )
                    }
                    .map_err(|e| e.into_parts().1)?;
                    // Readable from exit on, so a wake-up is never missed between the
                    // try_wait above and the registration.
                    let mut guard = ready.readable().await?;
                    guard.clear_ready();
                }
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// SIGKILL to the watchdog (which kills QEMU through its death signal), unless reaped.
    pub(crate) fn start_kill(&mut self) {
        if self.status.is_none() {
            // SAFETY: kill takes no pointer; the pid is unreaped, so still ours.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

impl Drop for WatchdogChild {
    /// An unreaped watchdog (its link is closing: it is tearing down) is reaped on a
    /// thread of its own, which unmaps its stack then; without a thread to spare, the
    /// stack is leaked rather than pulled from under it.
    fn drop(&mut self) {
        if !matches!(self.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.pid;
        let stack = UntilReaped(self.stack.take());
        let reaper = std::thread::Builder::new()
            .name("qemu-reaper".into())
            .spawn(move || {
                let mut stack = stack;
                let mut raw = 0;
                // SAFETY: a blocking waitpid on our own child.
                while unsafe { libc::waitpid(pid, &mut raw, 0) } < 0
                    && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                drop(stack.0.take());
            });
        if let Err(e) = reaper {
            tracing::warn!(
                pid,
                "no thread to reap a dropped watchdog (its stack is leaked): {e}"
            );
        }
    }
}

/// A watchdog's stack on its way to the thread that reaps it: leaked, not unmapped, if it
/// is dropped before (the thread could not start) — the watchdog may still run on it.
struct UntilReaped(Option<StackMapping>);

impl Drop for UntilReaped {
    fn drop(&mut self) {
        if let Some(stack) = self.0.take() {
            std::mem::forget(stack);
        }
    }
}
