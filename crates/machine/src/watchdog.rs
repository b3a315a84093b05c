//! The per-VM watchdog: a process between the manager and QEMU that contains QEMU (or its
//! wrapper) and everything they start, even when the manager is SIGKILLed.
//!
//! The spawner ([`spawn`](crate::spawn)) `clone`s the watchdog with `CLONE_VM` onto a stack
//! of its own ([`watchdog_main`]): it shares the manager's memory instead of copying it, so
//! a launch costs the same whatever the manager's size, and the manager's pages never turn
//! copy-on-write for as long as the VM runs (a forked watchdog made each launch of a 30 MB
//! Python process cost ~4 ms, and of a 200 MB one ~37 ms). The watchdog makes itself a
//! child subreaper and starts QEMU (or the wrapper) the way `posix_spawn` does
//! (`CLONE_VM | CLONE_VFORK`, [`qemu_main`]): in a process group of its own, with
//! `PR_SET_PDEATHSIG(SIGKILL)` aimed at the watchdog, and exactly the named descriptors
//! kept across exec. It reports QEMU's pid (or why it could not start it) on its link (one
//! end of a socketpair whose other end only the manager holds), closes every other
//! descriptor, and waits ([`run`]) for one of:
//!
//! - QEMU exits: it kills QEMU's process group and every descendant left (a wrapper's
//!   children, orphans reparented to it as subreaper, processes that left the group with
//!   `setsid`), reaps them all, leaves QEMU's wait status in the status slot the manager
//!   gave it, and exits; the manager reports that status as the VM's;
//! - the link ends (the manager died, even by SIGKILL, or dropped the machine) or the
//!   manager writes a byte on it: the same teardown, starting with SIGKILL to the group;
//! - a signal to the watchdog itself whose default action would end it (SIGTERM, SIGINT,
//!   SIGHUP, SIGQUIT, but also SIGUSR1, SIGALRM, SIGABRT or SIGSEGV sent with `kill`, a
//!   real-time signal...): the same teardown. Dying of it instead would leave what QEMU
//!   started (a wrapper's children) running, reparented away; a core-dumping one would
//!   also dump the manager's memory, and on kernels before 5.16 kill the manager.
//!
//! Why a watchdog process rather than the manager as a subreaper: when the manager is
//! SIGKILLed, only a process that outlives it can kill what QEMU started; a subreaper in
//! the manager dies with it (and would take every orphan of the host process and its exit
//! statuses). The death signal alone reaches only the process it was set in (the wrapper),
//! and a process group misses whatever leaves it.
//!
//! The watchdog runs in the manager's memory, at the same time as the manager, with the
//! thread pointer of the thread that spawned it. So everything here: makes only system
//! calls that return their errors ([`raw_syscall`](crate::raw_syscall)) and touches no
//! thread-local state (one exception: glibc's `clone` wrapper, which starts QEMU's child,
//! writes `errno` if that clone fails; the watchdog then reports EAGAIN without reading
//! it); allocates nothing and takes no lock; uses only its
//! own stack, the [`Plan`] (read-only, alive until the report) and its status slot; never
//! re-raises a signal or dumps core (a core dump would stop every process sharing the
//! memory, the manager included, on kernels before 5.16).

use std::ffi::{c_void, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::libc::{self, c_char, c_int, c_long, pid_t};

use crate::proc_scan::{close_all_but, kill_children};
use crate::raw_syscall::{args, syscall as call};

/// The watchdog's name in `ps` and `/proc/<pid>/comm`.
pub(crate) const WATCHDOG_NAME: &std::ffi::CStr = c"qemu-watchdog";

/// Signals whose default action ignores or stops a process: every other one (but SIGKILL)
/// makes the watchdog end the VM, as if its manager had gone.
const NOT_FATAL: [c_int; 8] = [
    libc::SIGCHLD,
    libc::SIGCONT,
    libc::SIGURG,
    libc::SIGWINCH,
    libc::SIGSTOP,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The kernel's `sigset_t` bit of `signal` (1..=64).
const fn bit(signal: c_int) -> u64 {
    1u64 << (signal - 1)
}

/// The signals that make the watchdog end the VM: every signal whose default action would
/// end the watchdog (SIGKILL aside, which cannot be caught), real-time ones included.
fn stop_mask() -> u64 {
    let mut mask = !bit(libc::SIGKILL);
    let mut i = 0;
    while i < NOT_FATAL.len() {
        mask &= !bit(NOT_FATAL[i]);
        i += 1;
    }
    mask
}

/// While tearing down, how long to wait for a SIGCHLD before scanning for descendants again
/// (a SIGCHLD wakes it sooner); also the poll period if `signalfd` is unavailable.
const RESCAN_MS: usize = 20;

/// The wait status of a process killed by SIGKILL.
pub(crate) const KILLED: c_int = libc::SIGKILL;

/// What the status slot holds until the watchdog writes QEMU's status into it.
pub(crate) const NO_STATUS: c_int = c_int::MIN;

/// Everything the watchdog and QEMU's child need, built by the spawner before the clone and
/// kept alive (unchanged) until the watchdog's report: only `exec_errno` and `watchdog` are
/// written, before the report.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The watchdog's end of its link.
    pub(crate) link: RawFd,
    /// The descriptors to make QEMU's stdin, stdout and stderr; -1 keeps the manager's.
    pub(crate) stdio: [RawFd; 3],
    /// Descriptors QEMU keeps across exec, under their numbers.
    pub(crate) inherit: Vec<RawFd>,
    /// The program's path (already looked up in `PATH`).
    pub(crate) path: CString,
    /// `argv` and `envp`: NUL-terminated arrays of pointers into `strings`.
    pub(crate) argv: Vec<*const c_char>,
    pub(crate) envp: Vec<*const c_char>,
    /// Owns what `argv` and `envp` point to (never read: kept for them).
    pub(crate) _strings: Vec<CString>,
    /// A directory the program must see read-only: the watchdog makes it so in a mount
    /// namespace of its own before starting the program.
    pub(crate) read_only: Option<CString>,
    /// The top of QEMU's child's stack (until its exec).
    pub(crate) qemu_stack: usize,
    /// Where the watchdog leaves QEMU's wait status (in the stack mapping, which the
    /// manager keeps until the watchdog is reaped).
    pub(crate) status: *const AtomicI32,
    /// The errno of a failed exec or setup in QEMU's child (0: none).
    pub(crate) exec_errno: AtomicI32,
    /// The watchdog's pid, for QEMU's child to check its parent.
    pub(crate) watchdog: AtomicI32,
}

/// Ends this process (its thread group only: the manager shares its memory, not its group).
fn exit(code: c_int) -> ! {
    loop {
        // SAFETY: exit_group takes no pointer and does not return.
        let _ = unsafe { call(libc::SYS_exit_group, args![code]) };
    }
}

/// The watchdog's entry point, on the stack the spawner gave it; never returns.
///
/// Contract (a `clone` callback cannot be an `unsafe fn`): only as the function of a `clone(CLONE_VM)` child, with `plan` pointing to a [`Plan`]
/// the manager keeps alive and unchanged until the report arrives on its link, and whose
/// status slot it keeps mapped until this process is reaped.
pub(crate) extern "C" fn watchdog_main(plan: *mut c_void) -> c_int {
    // SAFETY: the spawner passes its live plan (see the contract above).
    let plan = unsafe { &*(plan as *const Plan) };
    // Copied now: the plan is gone once the report is sent.
    let link = plan.link;
    let status = plan.status;
    // SAFETY: we are the freshly cloned watchdog, `plan` alive until `report`.
    match unsafe { start(plan) } {
        Ok(qemu) => {
            report(link, qemu, 0);
            // SAFETY: the status slot stays mapped until we are reaped.
            unsafe { run(link, qemu, &*status) }
        }
        Err(errno) => {
            report(link, 0, errno);
            exit(127)
        }
    }
}

/// Tells the manager QEMU's pid (or 0 and the errno of what failed).
fn report(link: RawFd, pid: pid_t, errno: c_int) {
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&pid.to_ne_bytes());
    message[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: sendto of a buffer on our stack, of its length.
    let _ = unsafe {
        call(
            libc::SYS_sendto,
            args![
                link,
                message.as_ptr(),
                message.len(),
                libc::MSG_NOSIGNAL,
                0,
                0
            ],
        )
    };
}

/// Sets the watchdog up and starts QEMU; QEMU's pid, or the errno of what failed.
///
/// # Safety
///
/// Only in the freshly cloned watchdog.
unsafe fn start(plan: &Plan) -> Result<pid_t, c_int> {
    // SAFETY (for the calls below): system calls on our own process, with pointers to the
    // plan (alive) or to our stack.
    unsafe {
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if fd >= 0 {
                call(libc::SYS_dup3, args![fd, target, 0])?;
            }
        }
        // A group of its own, away from the manager's (a terminal's ^C must not reach it).
        call(libc::SYS_setpgid, args![0, 0])?;
        call(
            libc::SYS_prctl,
            args![libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0],
        )?;
        // Before QEMU starts, so that neither the watchdog nor QEMU (until its exec) ever runs
        // a handler inherited from the manager, and a stop signal sent meanwhile waits,
        // pending, for the watchdog's signalfd.
        quiet_signals()?;
        if let Some(dir) = &plan.read_only {
            read_only_view(dir)?;
        }
        let me = call(libc::SYS_getpid, args![])? as pid_t;
        plan.watchdog.store(me, Ordering::SeqCst);
        // As posix_spawn does: QEMU's child runs in our memory, on a stack of its own, and
        // we wait until it has exec'd (or failed).
        let qemu = libc::clone(
            qemu_main,
            plan.qemu_stack as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *const Plan as *mut c_void,
        );
        if qemu <= 0 {
            // libc's clone stored its error in errno, which is not ours to read.
            return Err(libc::EAGAIN);
        }
        let failed = plan.exec_errno.load(Ordering::SeqCst);
        if failed != 0 {
            let _ = call(libc::SYS_wait4, args![qemu, 0, 0, 0]);
            return Err(failed);
        }
        // The child made its group itself; this only fails (EACCES) once it has exec'd.
        let _ = call(libc::SYS_setpgid, args![qemu, qemu]);
        Ok(qemu)
    }
}

/// QEMU's child, until its exec: a process group of its own, killed if the watchdog goes,
/// `inherit` kept open across exec, no signal blocked. Exits 127 (its errno in the plan)
/// if any of that or the exec fails.
///
/// Contract: only as the function of the watchdog's `clone(CLONE_VM | CLONE_VFORK)`, with `plan` its
/// plan.
extern "C" fn qemu_main(plan: *mut c_void) -> c_int {
    // SAFETY: the watchdog passes its plan (see the contract above).
    let plan = unsafe { &*(plan as *const Plan) };
    // SAFETY: system calls on our own process, with pointers into the plan.
    let errno = unsafe {
        let exec = || -> Result<usize, c_int> {
            call(libc::SYS_setpgid, args![0, 0])?;
            call(
                libc::SYS_prctl,
                args![libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0],
            )?;
            if call(libc::SYS_getppid, args![])? as pid_t != plan.watchdog.load(Ordering::SeqCst) {
                // The watchdog died before the death signal was armed.
                return Err(libc::ESRCH);
            }
            for &fd in &plan.inherit {
                call(libc::SYS_fcntl, args![fd, libc::F_SETFD, 0])?;
            }
            let none: u64 = 0;
            call(
                libc::SYS_rt_sigprocmask,
                args![libc::SIG_SETMASK, &none as *const u64, 0, 8],
            )?;
            call(
                libc::SYS_execve,
                args![plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()],
            )
        };
        match exec() {
            Err(errno) => errno,
            Ok(_) => libc::EINVAL,
        }
    };
    plan.exec_errno.store(errno, Ordering::SeqCst);
    exit(127)
}

/// A private mount namespace in which `dir` is a read-only bind mount of itself.
///
/// # Safety
///
/// Only in the watchdog, before QEMU's child starts.
unsafe fn read_only_view(dir: &CString) -> Result<(), c_int> {
    let none = std::ptr::null::<c_char>();
    // SAFETY: unshare and mount with NUL-terminated strings that outlive the calls.
    unsafe {
        call(libc::SYS_unshare, args![libc::CLONE_NEWNS])?;
        call(
            libc::SYS_mount,
            args![
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none
            ],
        )?;
        call(
            libc::SYS_mount,
            args![
                dir.as_ptr(),
                dir.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                none
            ],
        )?;
        call(
            libc::SYS_mount,
            args![
                none,
                dir.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                none
            ],
        )?;
    }
    Ok(())
}

/// The watchdog's life once QEMU runs; never returns.
///
/// # Safety
///
/// Only in the watchdog, `qemu` its child.
unsafe fn run(link: RawFd, qemu: pid_t, status: &AtomicI32) -> ! {
    // SAFETY: system calls with pointers to our stack.
    unsafe {
        let _ = call(
            libc::SYS_prctl,
            args![libc::PR_SET_NAME, WATCHDOG_NAME.as_ptr(), 0, 0, 0],
        );
        // Its memory is the manager's: never dumped to a core file should it fault. 1, not
        // 0: the value at which the kernel also refuses a dump to a `core_pattern` pipe
        // (and below the smallest file dump). Set now, so that QEMU keeps our limit.
        let no_core: [u64; 2] = [1, 1];
        let _ = call(
            libc::SYS_prlimit64,
            args![0, libc::RLIMIT_CORE, no_core.as_ptr(), 0],
        );
        // Copies of the manager's descriptors (other VMs' links, sockets) must not stay
        // open here: that would keep peers from seeing EOF.
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
        loop {
            if qemu_exited(qemu) {
                // The zombie still holds the pid, so the group id cannot be reused yet.
                let _ = call(libc::SYS_kill, args![-qemu, libc::SIGKILL]);
                let mut raw = KILLED;
                let reaped = match call(libc::SYS_wait4, args![qemu, &mut raw as *mut c_int, 0, 0])
                {
                    Ok(pid) if pid as pid_t == qemu => Some(raw),
                    _ => None,
                };
                let end = teardown(qemu, reaped, signals);
                status.store(end.unwrap_or(KILLED), Ordering::SeqCst);
                exit(0);
            }
            let ready = if signals >= 0 {
                poll(&mut fds, None)
            } else {
                poll(&mut fds[..1], Some(RESCAN_MS))
            };
            if ready.is_err() {
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
        let _ = call(libc::SYS_kill, args![-qemu, libc::SIGKILL]);
        let end = teardown(qemu, None, signals);
        status.store(end.unwrap_or(KILLED), Ordering::SeqCst);
        exit(0)
    }
}

/// `ppoll` on `fds` (negative descriptors ignored), at most `ms` milliseconds (None:
/// forever); the number ready.
fn poll(fds: &mut [libc::pollfd], ms: Option<usize>) -> Result<usize, c_int> {
    let timeout = ms.map(|ms| libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as c_long,
    });
    let timeout_ptr = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: ppoll on a slice of pollfds and a timespec on our stack; no signal mask.
    unsafe {
        call(
            libc::SYS_ppoll,
            args![fds.as_mut_ptr(), fds.len(), timeout_ptr, 0, 8],
        )
    }
}

/// The link is readable: EOF or an error (the manager is gone) or a byte (the manager asks
/// for the end) mean stop; only a spurious wake-up does not.
fn link_says_stop(link: RawFd) -> bool {
    let mut buf = [0u8; 16];
    // SAFETY: recvfrom into a buffer on our stack, of its length.
    let got = unsafe {
        call(
            libc::SYS_recvfrom,
            args![link, buf.as_mut_ptr(), buf.len(), libc::MSG_DONTWAIT, 0, 0],
        )
    };
    !matches!(got, Err(libc::EAGAIN | libc::EINTR))
}

/// True when QEMU has exited (not reaped yet: it is left a zombie). Reaps, as init would,
/// any other child that exited meanwhile (orphans reparented to us).
fn qemu_exited(qemu: pid_t) -> bool {
    loop {
        // SAFETY: waitid writes into a zeroed siginfo_t on our stack; si_pid reads it.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            match call(
                libc::SYS_waitid,
                args![libc::P_ALL, 0, &mut info as *mut libc::siginfo_t, flags, 0],
            ) {
                Err(libc::EINTR) => continue,
                // No child at all: QEMU is gone (cannot happen while it is unreaped).
                Err(_) => return true,
                Ok(_) => {}
            }
            match info.si_pid() {
                0 => return false,
                pid if pid == qemu => return true,
                pid => {
                    let _ = call(libc::SYS_wait4, args![pid, 0, libc::WNOHANG, 0]);
                }
            }
        }
    }
}

/// SIGKILLs every child until none is left, reaping them (a killed child's children are
/// reparented to us, the subreaper, and found by the next scan); returns QEMU's status if
/// it was reaped here, else `qemu_status`.
fn teardown(qemu: pid_t, mut qemu_status: Option<c_int>, signals: c_int) -> Option<c_int> {
    // Reaps every child that exited; true once none is left.
    let reap_all = |qemu_status: &mut Option<c_int>| loop {
        let mut status = 0;
        // SAFETY: wait4 writes the status on our stack.
        let got = unsafe {
            call(
                libc::SYS_wait4,
                args![-1i32, &mut status as *mut c_int, libc::WNOHANG, 0],
            )
        };
        match got {
            Ok(0) => return false,
            Ok(pid) => {
                if pid as pid_t == qemu {
                    *qemu_status = Some(status);
                }
            }
            Err(libc::EINTR) => {}
            Err(_) => return true, // ECHILD
        }
    };
    // SAFETY: getpid takes no pointer.
    let me = unsafe { call(libc::SYS_getpid, args![]) }.map_or(0, |pid| pid as pid_t);
    // Usually QEMU was the only child: then /proc is never scanned.
    while !reap_all(&mut qemu_status) {
        kill_children(me);
        if reap_all(&mut qemu_status) {
            break;
        }
        let mut fd = [libc::pollfd {
            fd: signals,
            events: libc::POLLIN,
            revents: 0,
        }];
        // A negative fd is ignored by poll: then this is a plain sleep.
        if poll(&mut fd, Some(RESCAN_MS)).is_ok_and(|n| n > 0) {
            drain_signals(signals);
        }
    }
    qemu_status
}

/// The kernel's `sigset_t` (64 signals) with SIGCHLD and the stop signals: what the
/// watchdog blocks and reads from its signalfd. A fault of its own (a synchronous SIGSEGV)
/// still ends it: the kernel unblocks those.
fn watched_mask() -> u64 {
    stop_mask() | bit(libc::SIGCHLD)
}

/// A signalfd reporting SIGCHLD and the stop signals, blocked since [`quiet_signals`]
/// (-1 if none could be made: then we poll).
fn watch_signals() -> c_int {
    let mask = watched_mask();
    // SAFETY: signalfd4 on a mask on our stack.
    unsafe {
        call(
            libc::SYS_signalfd4,
            args![
                -1i32,
                &mask as *const u64,
                8,
                libc::SFD_NONBLOCK | libc::SFD_CLOEXEC
            ],
        )
    }
    .map_or(-1, |fd| fd as c_int)
}

/// Every signal back to its default action (QEMU's exit must also leave a zombie to wait
/// for, not be reaped by an inherited SIG_IGN), and exactly the watched ones blocked.
///
/// # Safety
///
/// Only in the watchdog (it changes the whole process's dispositions).
unsafe fn quiet_signals() -> Result<(), c_int> {
    // The kernel's struct sigaction, all zero: SIG_DFL, no flags, empty mask.
    let default = [0usize; 4];
    for signal in 1..=64 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: rt_sigaction with a zeroed action on our stack; an invalid signal
            // number (32, 33: the C library's) is refused, which is fine.
            let _ = unsafe {
                call(
                    libc::SYS_rt_sigaction,
                    args![signal, default.as_ptr(), 0, 8],
                )
            };
        }
    }
    let mask = watched_mask();
    // Blocked, a SIGCHLD stays pending (even at its default action) for the signalfd.
    // SAFETY: rt_sigprocmask with a mask on our stack.
    unsafe {
        call(
            libc::SYS_rt_sigprocmask,
            args![libc::SIG_SETMASK, &mask as *const u64, 0, 8],
        )?;
    }
    Ok(())
}

/// Reads every pending signal from the signalfd; true if one of them asks us to stop.
fn drain_signals(signals: c_int) -> bool {
    let mut stop = false;
    loop {
        // SAFETY: a zeroed signalfd_siginfo on our stack, read in whole.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: read of at most `size` bytes into `info`.
        let got = unsafe {
            call(
                libc::SYS_read,
                args![signals, &mut info as *mut libc::signalfd_siginfo, size],
            )
        };
        if got != Ok(size) {
            return stop;
        }
        stop |=
            (1..=64).contains(&info.ssi_signo) && stop_mask() & bit(info.ssi_signo as c_int) != 0;
    }
}

/// Without a signalfd: takes the pending stop signals; true if there was one.
fn pending_stop_signal() -> bool {
    let mut pending: u64 = 0;
    // SAFETY: rt_sigpending and rt_sigtimedwait (zero timeout) on our stack.
    unsafe {
        if call(libc::SYS_rt_sigpending, args![&mut pending as *mut u64, 8]).is_err() {
            return false;
        }
        let mut stop = false;
        for signal in 1..=64 {
            let one = bit(signal);
            if pending & stop_mask() & one != 0 {
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let _ = call(
                    libc::SYS_rt_sigtimedwait,
                    args![&one as *const u64, 0, &zero as *const libc::timespec, 8],
                );
                stop = true;
            }
        }
        stop
    }
}
