//! The shutdown ladder: ask (or wait), then SIGKILL, then reap; and what is left after.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use crate::spawn::WatchdogChild as Child;
use nix::sys::signal::Signal;
use qmp::Request;
use tokio::time::Instant;

use crate::config::{KeepRunDir, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::error::{
    redact_argv, shell_words, signal_name, AbnormalShutdown, Error, ErrorKind, Result,
    ShutdownCause,
};
use crate::machine::{Finished, Machine, Phase};
use crate::spawn::signal_group;

/// How long to wait, once QEMU has exited, for the console's last bytes.
const CONSOLE_FLUSH: Duration = Duration::from_millis(500);
/// How long reaping after SIGKILL may take before we call QEMU stuck.
pub(crate) const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a shutdown asks QEMU to stop: the first rung of the ladder (SIGKILL is the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// `quit` over QMP.
    Quit,
    /// SIGTERM to the process group (when the QMP monitor is disabled).
    Terminate,
    /// Nothing: QEMU is expected to exit by itself (the guest powers off, or `quit` was
    /// already sent).
    AwaitExit,
    /// SIGKILL at once.
    Kill,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Quit => "quit",
            Stop::Terminate => "SIGTERM",
            Stop::AwaitExit => "waiting for QEMU to exit by itself",
            Stop::Kill => "SIGKILL",
        })
    }
}

impl Machine {
    /// Graceful shutdown with the default deadline (30 s): see
    /// [`shutdown_timeout`](Self::shutdown_timeout).
    ///
    /// # Errors
    ///
    /// As [`shutdown_timeout`](Self::shutdown_timeout).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.shutdown_timeout(DEFAULT_SHUTDOWN_TIMEOUT).await
    }

    /// Sends `quit` (SIGTERM when QMP is disabled; nothing when a `quit` was already
    /// accepted) and waits up to `timeout` for QEMU to exit; then SIGKILL and reap. The
    /// console keeps draining meanwhile (QEMU cannot block on it) and stays readable
    /// afterwards through [`console`](Self::console). A no-op when not running.
    ///
    /// Cancel-safe: if this future is dropped, QEMU stays owned by the machine (a `quit`
    /// already accepted is remembered); calling again, or dropping the machine, ends it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::AbnormalShutdown`] (QEMU is reaped by then) whose [`ShutdownCause`] says
    /// which rung failed: `quit` refused, no exit within `timeout`, killed by a signal
    /// nobody here sent, or not reapable after SIGKILL.
    pub async fn shutdown_timeout(&mut self, timeout: Duration) -> Result<()> {
        let Some(running) = self.phase.process() else {
            return Ok(());
        };
        let stop = match (running.quit_issued, running.qmp.is_some()) {
            (true, _) => Stop::AwaitExit,
            (false, true) => Stop::Quit,
            (false, false) => Stop::Terminate,
        };
        self.stop(stop, timeout).await
    }

    /// Waits up to `timeout` for QEMU to exit by itself (e.g. the guest powered off),
    /// sending nothing; then as [`shutdown_timeout`](Self::shutdown_timeout).
    ///
    /// # Errors
    ///
    /// As [`shutdown_timeout`](Self::shutdown_timeout); [`ShutdownCause::NoExit`] when
    /// QEMU is still running after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<()> {
        self.stop(Stop::AwaitExit, timeout).await
    }

    /// SIGKILL at once, then reap. Not reported as abnormal.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::AbnormalShutdown`] with [`ShutdownCause::NotReaped`] when QEMU cannot be
    /// reaped.
    pub async fn kill(&mut self) -> Result<()> {
        self.stop(Stop::Kill, REAP_TIMEOUT).await
    }

    /// The ladder. Every `await` happens with QEMU still in the phase; only the last,
    /// synchronous step ([`finish`](Self::finish)) moves it out.
    async fn stop(&mut self, stop: Stop, timeout: Duration) -> Result<()> {
        let name = self.config.name.clone();
        let Some(running) = self.phase.process_mut() else {
            return Ok(());
        };
        let mut cause = None;
        if stop == Stop::Kill {
            running.sigkill();
        } else if running.exit.is_none() {
            let deadline = crate::deadline::deadline_after(timeout);
            match stop {
                Stop::Quit => {
                    if let Some(client) = &running.qmp {
                        tracing::debug!(machine = %name, "asking QEMU to quit");
                        match client
                            .execute_request(Request::new("quit").timeout(timeout))
                            .await
                        {
                            Ok(_) => running.quit_issued = true,
                            Err(e) if e.is_disconnected() => running.quit_issued = true,
                            Err(e) => cause = Some(ShutdownCause::QuitFailed(Box::new(e))),
                        }
                    }
                }
                Stop::Terminate => {
                    running.signals_sent.push(Signal::SIGTERM);
                    signal_group(running.pid, Signal::SIGTERM);
                }
                Stop::AwaitExit | Stop::Kill => {}
            }
            if cause.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                running.exit = wait_exit(&mut running.child, left).await;
                if running.exit.is_none() {
                    cause = Some(ShutdownCause::NoExit {
                        after: timeout,
                        stop,
                    });
                }
            }
            if cause.is_some() {
                running.sigkill();
            }
        }
        if running.exit.is_none() {
            running.exit = wait_exit(&mut running.child, REAP_TIMEOUT).await;
            if running.exit.is_none() {
                cause.get_or_insert(ShutdownCause::NotReaped { pid: running.pid });
            }
        }
        if let Some(console) = &running.console {
            console.close(CONSOLE_FLUSH).await;
        }
        self.finish(cause)
    }

    /// Ends the run once QEMU is reaped (or given up on): sessions closed, the last events
    /// cached, the group killed if a wrapper's child lingers, the run dir removed or kept.
    /// Synchronous, so no cancellation can split it.
    fn finish(&mut self, mut cause: Option<ShutdownCause>) -> Result<()> {
        let name = self.config.name.clone();
        let Some(running) = self.phase.process_mut() else {
            return Ok(());
        };
        running.close_sessions();
        let last_events = running
            .subscription
            .take()
            .map(|mut s| s.drain())
            .unwrap_or_default();
        for event in last_events {
            self.cache_event(event);
        }
        let Some(running) = self.phase.process_mut() else {
            unreachable!("checked above")
        };
        // A wrapper's children: the watchdog killed and reaped them all before it exited;
        // if it was not reaped (stuck), it has been told to and its link closes below.
        if running.exit.is_none() {
            running.sigkill();
        }
        if let Some(signal) = running.exit.and_then(|s| s.signal()) {
            let sent = running.signals_sent.iter().any(|s| *s as i32 == signal);
            if !sent {
                tracing::warn!(
                    machine = %name,
                    "qemu received signal {signal} ({}) that this library did not send; command: {}",
                    signal_name(signal),
                    shell_words(&redact_argv(&running.argv))
                );
                cause.get_or_insert(ShutdownCause::UnsentSignal { signal });
            }
        }
        let keep = match self.config.keep_run_dir {
            KeepRunDir::Always => true,
            KeepRunDir::OnFailure => cause.is_some(),
            KeepRunDir::Never => false,
        };
        let stays = keep || self.config.log_dir.is_some();
        let tails =
            crate::log_file::finish(&running.log_path, &running.argv, stays, cause.is_some());
        let (output, log) = (tails.error, tails.log);
        self.enter(|phase| {
            let (Phase::Launching(mut running) | Phase::Running(mut running)) = phase else {
                unreachable!("checked above")
            };
            let kept_run_dir = running.run_dir.finish(keep);
            let status = running.exit;
            let error = cause.map(|cause| {
                Error::new(
                    name,
                    ErrorKind::AbnormalShutdown(Box::new(AbnormalShutdown {
                        cause,
                        status,
                        command: redact_argv(&running.argv),
                        output,
                    })),
                )
            });
            let finished = Finished {
                status,
                argv: std::mem::take(&mut running.argv),
                log,
                kept_run_dir,
                console: running.console.take(),
            };
            (Phase::Finished(finished), error)
        })
        .map_or(Ok(()), Err)
    }
}

pub(crate) async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => {
            tracing::warn!("waiting for QEMU failed: {e}");
            None
        }
        Err(_) => None,
    }
}
