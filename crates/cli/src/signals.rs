//! The signals `run` answers: SIGTERM, SIGHUP, SIGINT and SIGQUIT end the VM the way a
//! detach does (a second one kills it) instead of killing us with the terminal raw, the
//! run dir and the `--qmp` socket file left behind.

use std::io;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// A signal that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caught(pub(crate) Signal);

impl Caught {
    /// The exit status after it: 128 + its number, as a shell reports a death by it.
    pub(crate) fn exit_status(self) -> u8 {
        u8::try_from(128 + self.0 as i32).unwrap_or(255)
    }

    /// Its name, e.g. `SIGTERM`.
    pub(crate) fn name(self) -> &'static str {
        self.0.as_str()
    }
}

/// Handlers for SIGTERM, SIGHUP, SIGINT and SIGQUIT, installed for the life of the process.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (from now on these signals no longer end the process) and
    /// ignores SIGPIPE: a closed stdout is seen as a write error instead.
    pub(crate) fn listen() -> io::Result<Signals> {
        // SAFETY: SIG_IGN runs no code of ours in a signal context.
        unsafe {
            nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn)
                .map_err(io::Error::from)?;
        }
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal.
    pub(crate) async fn recv(&mut self) -> Caught {
        tokio::select! {
            Some(()) = self.term.recv() => Caught(Signal::SIGTERM),
            Some(()) = self.hup.recv() => Caught(Signal::SIGHUP),
            Some(()) = self.int.recv() => Caught(Signal::SIGINT),
            Some(()) = self.quit.recv() => Caught(Signal::SIGQUIT),
            else => std::future::pending().await,
        }
    }
}

/// Ends every child of this process that leads a process group of its own: the library's
/// per-VM watchdogs, which on SIGTERM kill QEMU, its group and every descendant, then exit
/// as QEMU did (a SIGKILL would end only the watchdog, and a descendant that left QEMU's
/// group would escape); returns how many. Used when a launch is aborted: the library's
/// launch watches its child, so it then fails fast and cleans up after itself.
pub(crate) fn kill_child_groups() -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 1..].split_whitespace().skip(1);
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        let pgrp = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && pgrp == Some(pid) {
            if let Ok(group) = i32::try_from(pid) {
                if killpg(Pid::from_raw(group), Signal::SIGTERM).is_ok() {
                    killed += 1;
                }
            }
        }
    }
    killed
}

/// SIGKILLs the process group `pid` leads (QEMU's: the library starts it in its own).
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (already gone) is what we want anyway.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
