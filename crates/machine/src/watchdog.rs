//! The per-VM watchdog: a process between the manager and QEMU that contains QEMU (or its
//! wrapper) and everything they start, even when the manager is SIGKILLed.
//!
//! The spawner forks a child (`std::process::Command`, own process group); in `pre_exec`
//! that child becomes the watchdog ([`split`]): it makes itself a child subreaper and forks
//! again. The grandchild returns from `pre_exec` and execs QEMU or the wrapper, in a
//! process group of its own, with `PR_SET_PDEATHSIG(SIGKILL)` aimed at the watchdog. The
//! watchdog never returns from `pre_exec`: it reports the grandchild's pid on its link
//! (one end of a socketpair whose other end only the manager holds), closes every other
//! descriptor, and waits ([`run`]) for one of:
//!
//! - QEMU (the grandchild) exits: it kills its process group and every descendant left
//!   (a wrapper's children, orphans reparented to it as subreaper, processes that left
//!   the group with `setsid`), reaps them all, and exits *as QEMU did* (same exit code, or
//!   killed by the same signal), so the manager's `Child` reports QEMU's status;
//! - the link ends (the manager died, even by SIGKILL, or dropped the machine) or the
//!   manager writes a byte on it: the same teardown, starting with SIGKILL to the group;
//! - SIGTERM, SIGINT, SIGHUP or SIGQUIT to the watchdog itself: the same teardown.
//!
//! Why a watchdog process rather than the manager as a subreaper: when the manager is
//! SIGKILLed, only a process that outlives it can kill what QEMU started; a subreaper in
//! the manager dies with it (and would take every orphan of the host process and its exit
//! statuses). The death signal alone reaches only the process it was set in (the wrapper),
//! and a process group misses whatever leaves it.
//!
//! Everything here runs between fork and exec of a multithreaded process: only
//! async-signal-safe system calls, no allocation, no locks, fixed buffers on the stack.
//! The watchdog itself is single-threaded (a fork copies only the forking thread).

use std::io;
use std::os::fd::RawFd;
use std::ptr;

use nix::libc::{self, c_int, c_long, c_uint, c_ulong, pid_t};

/// The watchdog's name in `ps` and `/proc/<pid>/comm`.
pub(crate) const WATCHDOG_NAME: &std::ffi::CStr = c"qemu-watchdog";

/// Signals that make the watchdog end the VM, as if its manager had gone.
const STOP_SIGNALS: [c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// While tearing down, how long to wait for a SIGCHLD before scanning for descendants again
/// (a SIGCHLD wakes it sooner); also the poll period if `signalfd` is unavailable.
const RESCAN_MS: c_int = 20;

/// The status of a process killed by SIGKILL (what `waitpid` would report).
const KILLED: c_int = libc::SIGKILL;

/// Runs in the spawner's child, between fork and exec: turns it into the watchdog and
/// forks the process that will exec QEMU. Returns only in that grandchild (`Ok` once it is
/// ready to exec, or the errno of what failed) or in the watchdog before the second fork
/// (then the spawn fails with that errno). `link` is the watchdog's end of its socketpair
/// (close-on-exec, so the grandchild's exec closes its copy); `inherit` are the descriptors
/// QEMU keeps across exec.
///
/// # Safety
///
/// Only in a child process between fork and exec (from `pre_exec`), with `link` open.
pub(crate) unsafe fn split(link: RawFd, inherit: &[RawFd]) -> io::Result<()> {
    // SAFETY (for the calls below): prctl, getpid, fork and setpgid are system calls; the
    // errors are raw errnos (`last_os_error` stores the number inline: no allocation).
    // fork runs in a process whose only thread is this one (the spawner's fork copied only
    // its own thread), so no lock fork's handlers take can be held by another thread, and
    // glibc re-initialised its own locks in this child after the first fork.
    if unsafe { prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Before the second fork, so that neither the watchdog nor QEMU (until its exec) ever
    // runs a handler inherited from the manager (they write to the manager's descriptors),
    // and a stop signal sent meanwhile waits, pending, for the watchdog's signalfd.
    // SAFETY: only sigaction and sigprocmask on stack structures.
    unsafe { quiet_signals() };
    let watchdog = unsafe { libc::getpid() };
    let qemu = unsafe { libc::fork() };
    if qemu < 0 {
        return Err(io::Error::last_os_error());
    }
    if qemu == 0 {
        // SAFETY: we are the grandchild, between fork and exec (this function's contract).
        return unsafe { prepare_qemu(watchdog, inherit) };
    }
    // Whichever of the two runs first puts the grandchild in its group (it does so itself
    // too); EACCES once it has exec'd, by which time its own call was made. So the group
    // exists before the pid is reported.
    // SAFETY: setpgid is a system call on our own child.
    unsafe { libc::setpgid(qemu, qemu) };
    // SAFETY: we are the watchdog, single-threaded, between fork and exec; `run` never
    // returns, so std's exec path never runs here.
    unsafe { run(link, qemu) }
}

/// The grandchild, before it execs QEMU: a process group of its own, killed if the
/// watchdog goes, and `inherit` kept open across exec.
///
/// # Safety
///
/// Only in the grandchild between fork and exec.
unsafe fn prepare_qemu(watchdog: pid_t, inherit: &[RawFd]) -> io::Result<()> {
    // SAFETY: setpgid, prctl, getppid and fcntl are system calls; errors are raw errnos.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != watchdog {
            // The watchdog died before the death signal was armed.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        for &fd in inherit {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // QEMU gets the stop signals and SIGCHLD as usual (blocked only for the watchdog).
        if libc::sigprocmask(libc::SIG_UNBLOCK, &watched_mask(), ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The watchdog's life after the second fork; never returns.
///
/// # Safety
///
/// Only in the watchdog (single-threaded, between fork and exec), `qemu` its child.
unsafe fn run(link: RawFd, qemu: pid_t) -> ! {
    // SAFETY: prctl, setrlimit, send, close_range/close, sigaction, sigprocmask, signalfd,
    // poll, recv, read, waitid, waitpid, kill and _exit are system calls (through thin libc
    // wrappers that neither allocate nor lock); every buffer is on this stack.
    unsafe {
        prctl(libc::PR_SET_NAME, WATCHDOG_NAME.as_ptr() as c_ulong);
        // It holds a copy of the manager's memory: never dumped to a core file (this also
        // covers the signal it re-raises to exit as QEMU did).
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let pid = qemu.to_ne_bytes();
        libc::send(
            link,
            pid.as_ptr().cast(),
            pid.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        );
        // Copies of the manager's descriptors (other VMs' links, sockets, std's exec-error
        // pipe) must not stay open here: that would keep peers from seeing EOF.
        close_all_but(link);
        let signals = watch_signals();
        let mut fds = [
            libc::pollfd {
                fd: link,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let (count, timeout) = if signals >= 0 {
            (2, -1)
        } else {
            (1, RESCAN_MS)
        };
        loop {
            if qemu_exited(qemu) {
                // The zombie still holds the pid, so the group id cannot be reused yet.
                libc::kill(-qemu, libc::SIGKILL);
                let mut status = KILLED;
                let mut reaped = None;
                if libc::waitpid(qemu, &mut status, 0) == qemu {
                    reaped = Some(status);
                }
                let status = teardown(qemu, reaped, signals);
                exit_as(status.unwrap_or(KILLED));
            }
            let ready = libc::poll(fds.as_mut_ptr(), count, timeout);
            if ready < 0 {
                continue; // EINTR
            }
            if fds[0].revents != 0 && link_says_stop(link) {
                break;
            }
            if signals >= 0 && fds[1].revents != 0 && drain_signals(signals) {
                break;
            }
            if signals < 0 && pending_stop_signal() {
                break;
            }
        }
        libc::kill(-qemu, libc::SIGKILL);
        let status = teardown(qemu, None, signals);
        exit_as(status.unwrap_or(KILLED))
    }
}

/// prctl with one argument (the others zero), all passed as the `unsigned long`s the
/// variadic call reads.
///
/// # Safety
///
/// As `prctl(2)` for `option` (a pointer argument must be valid).
unsafe fn prctl(option: c_int, arg: c_ulong) -> c_int {
    // SAFETY: per this function's contract; prctl is a system call.
    unsafe { libc::prctl(option, arg, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }
}

/// This thread's errno (read without allocating: the error holds the raw number).
fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The link is readable: EOF or an error (the manager is gone) or a byte (the manager asks
/// for the end) mean stop; only a spurious wake-up does not.
unsafe fn link_says_stop(link: RawFd) -> bool {
    let mut buf = [0u8; 16];
    // SAFETY: recv into a buffer on our stack, of its length.
    let n = unsafe { libc::recv(link, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n >= 0 {
        return true;
    }
    let errno = errno();
    !(errno == libc::EAGAIN || errno == libc::EINTR)
}

/// True when QEMU has exited (not reaped yet: it is left a zombie). Reaps, as init would,
/// any other child that exited meanwhile (orphans reparented to us).
unsafe fn qemu_exited(qemu: pid_t) -> bool {
    loop {
        // SAFETY: waitid writes into a zeroed siginfo_t on our stack; si_pid reads it.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
                match errno() {
                    libc::EINTR => continue,
                    // No child at all: QEMU is gone (cannot happen while it is unreaped).
                    _ => return true,
                }
            }
            match info.si_pid() {
                0 => return false,
                pid if pid == qemu => return true,
                pid => {
                    let mut status = 0;
                    libc::waitpid(pid, &mut status, libc::WNOHANG);
                }
            }
        }
    }
}

/// SIGKILLs every child until none is left, reaping them (a killed child's children are
/// reparented to us, the subreaper, and found by the next scan); returns QEMU's status if
/// it was reaped here, else `qemu_status`.
unsafe fn teardown(qemu: pid_t, mut qemu_status: Option<c_int>, signals: c_int) -> Option<c_int> {
    // SAFETY: getpid, waitpid, poll, read: system calls on our own stack buffers.
    unsafe {
        let me = libc::getpid();
        // Reaps every child that exited; true once none is left.
        let reap_all = |qemu_status: &mut Option<c_int>| loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
            if pid == qemu {
                *qemu_status = Some(status);
            }
            if pid > 0 {
                continue;
            }
            if pid == 0 {
                return false;
            }
            if errno() != libc::EINTR {
                return true; // ECHILD
            }
        };
        // Usually QEMU was the only child: then /proc is never scanned.
        while !reap_all(&mut qemu_status) {
            kill_children(me);
            if reap_all(&mut qemu_status) {
                break;
            }
            let mut fd = libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            };
            // A negative fd is ignored by poll: then this is a plain sleep.
            if libc::poll(&mut fd, 1, RESCAN_MS) > 0 {
                drain_signals(signals);
            }
        }
        qemu_status
    }
}

/// Exits the way QEMU did: its exit code, or killed by its signal (default action
/// restored; no core dump of this copy of the manager: `run` set its limit to 0).
unsafe fn exit_as(status: c_int) -> ! {
    // SAFETY: sigaction, kill, sigprocmask and _exit are system calls; the
    // structures are zeroed on our stack.
    unsafe {
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let signal = if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            libc::SIGKILL
        };
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &action, ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &mask, ptr::null_mut());
        // Only if the signal did not end us.
        libc::_exit(128 + signal)
    }
}

/// A signalfd reporting SIGCHLD and the stop signals, blocked since [`quiet_signals`]
/// (-1 if none could be made: then we poll).
unsafe fn watch_signals() -> c_int {
    // SAFETY: signalfd on a mask built on our stack (blocked since `quiet_signals`).
    unsafe { libc::signalfd(-1, &watched_mask(), libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) }
}

/// Every signal back to its default action (QEMU's exit must also leave a zombie to wait
/// for, not be reaped by an inherited SIG_IGN), and the watched ones blocked.
///
/// # Safety
///
/// Only between fork and exec (it changes the whole process's dispositions).
unsafe fn quiet_signals() {
    // SAFETY: sigaction and sigprocmask are system calls; the structures are on our stack;
    // errors are ignored on purpose (an invalid signal number is refused, the rest cannot
    // fail here).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &action, ptr::null_mut());
            }
        }
        // Blocked, a SIGCHLD stays pending (even at its default action) for the signalfd.
        libc::sigprocmask(libc::SIG_BLOCK, &watched_mask(), ptr::null_mut());
    }
}

/// SIGCHLD and the stop signals: what the watchdog reads from its signalfd.
fn watched_mask() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set on our stack.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut mask, signal);
        }
        mask
    }
}

/// Reads every pending signal from the signalfd; true if one of them asks us to stop.
unsafe fn drain_signals(signals: c_int) -> bool {
    let mut stop = false;
    loop {
        // SAFETY: read of exactly one signalfd_siginfo into a zeroed one on our stack.
        let signal = unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            if libc::read(
                signals,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            ) != size as isize
            {
                return stop;
            }
            info.ssi_signo as c_int
        };
        stop |= STOP_SIGNALS.contains(&signal);
    }
}

/// Without a signalfd: takes the pending stop signals; true if there was one.
unsafe fn pending_stop_signal() -> bool {
    // SAFETY: sigpending and sigtimedwait (zero timeout) on stack structures.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending);
        let mut stop = false;
        for signal in STOP_SIGNALS {
            if libc::sigismember(&pending, signal) == 1 {
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, signal);
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::sigtimedwait(&one, ptr::null_mut(), &zero);
                stop = true;
            }
        }
        stop
    }
}

/// Closes every descriptor but `keep`: `close_range`, or one by one from /proc/self/fd on
/// kernels before 5.9.
unsafe fn close_all_but(keep: RawFd) {
    let keep = keep as c_uint;
    // SAFETY: close_range is a system call closing our own descriptors.
    let ranged = unsafe {
        (keep == 0
            || libc::syscall(
                libc::SYS_close_range,
                0 as c_ulong,
                c_ulong::from(keep - 1),
                0 as c_ulong,
            ) == 0)
            && libc::syscall(
                libc::SYS_close_range,
                c_ulong::from(keep + 1),
                c_ulong::from(c_uint::MAX),
                0 as c_ulong,
            ) == 0
    };
    if ranged {
        return;
    }
    // SAFETY: open, getdents64 (in `for_each_entry`) and close on our own descriptors.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return;
        }
        // /proc/self/fd is listed in descriptor order: closing the ones already listed
        // does not disturb the listing.
        for_each_entry(dir, |name| {
            if let Some(fd) = parse_number(name) {
                if fd != keep as c_int && fd != dir {
                    libc::close(fd);
                }
            }
        });
        libc::close(dir);
    }
}

/// SIGKILLs every process whose parent is `me`, found by scanning /proc/<pid>/stat.
unsafe fn kill_children(me: pid_t) {
    // SAFETY: open, getdents64, openat, read, close and kill: system calls on stack buffers.
    unsafe {
        let proc = libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if proc < 0 {
            return;
        }
        for_each_entry(proc, |name| {
            let Some(pid) = parse_number(name) else {
                return;
            };
            if parent_of(proc, name) == Some(me) {
                libc::kill(pid, libc::SIGKILL);
            }
        });
        libc::close(proc);
    }
}

/// The parent pid from /proc/<name>/stat (`proc` is an open /proc).
unsafe fn parent_of(proc: c_int, name: &[u8]) -> Option<pid_t> {
    const SUFFIX: &[u8] = b"/stat\0";
    let mut path = [0u8; 32];
    let end = name.len() + SUFFIX.len();
    path.get_mut(..name.len())?.copy_from_slice(name);
    path.get_mut(name.len()..end)?.copy_from_slice(SUFFIX);
    let mut stat = [0u8; 512];
    // SAFETY: openat of a NUL-terminated path on our stack, read into a stack buffer.
    let n = unsafe {
        let fd = libc::openat(proc, path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
        libc::close(fd);
        n
    };
    parse_ppid(stat.get(..usize::try_from(n).ok()?)?)
}

/// `pid (comm) state ppid ...`: comm may hold spaces and parentheses, the fields after it
/// do not, so the last `)` ends it.
fn parse_ppid(stat: &[u8]) -> Option<pid_t> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat
        .get(close + 1..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    fields.next()?; // state
    parse_number(fields.next()?)
}

/// A non-negative decimal that fits a pid (or a descriptor number).
fn parse_number(text: &[u8]) -> Option<c_int> {
    if text.is_empty() || text.len() > 10 {
        return None;
    }
    let mut value: c_int = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(c_int::from(b - b'0'))?;
    }
    Some(value)
}

/// Calls `f` with the name of each entry of the open directory `dir` (getdents64 into a
/// stack buffer; no allocation, unlike readdir).
unsafe fn for_each_entry(dir: c_int, mut f: impl FnMut(&[u8])) {
    // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name (NUL-ended).
    const NAME_AT: usize = 19;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                c_long::from(dir),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let Ok(n @ 1..) = usize::try_from(n) else {
            return;
        };
        let mut at = 0;
        while at + NAME_AT <= n {
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            let Some(record) = buf.get(at + NAME_AT..at + reclen) else {
                return;
            };
            if reclen == 0 {
                return;
            }
            let len = record.iter().position(|&b| b == 0).unwrap_or(record.len());
            f(&record[..len]);
            at += reclen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_their_parent() {
        assert_eq!(parse_ppid(b"42 (qemu) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid(b"42 (a) b) c) Z 1234 0"), Some(1234));
        assert_eq!(parse_ppid(b"42 (x"), None);
        assert_eq!(parse_ppid(b"42 (x) S"), None);
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_number(b"2147483648"), None);
        assert_eq!(parse_number(b"self"), None);
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"12a"), None);
    }
}
