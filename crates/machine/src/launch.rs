//! Launching: run dir, sockets, command line, spawn, then QMP while watching the child.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use qmp::{EventFilter, Listener};

use crate::argv::{command_line, Attachments, MonitorChardev};
use crate::config::{Config, KeepRunDir, Monitor};
use crate::console::Console;
use crate::error::{
    redact_argv, shell_words, Error, ErrorKind, LaunchFailure, LaunchReason, Result,
};
use crate::log_file::create_private;
use crate::machine::{Finished, Machine, Phase, Running, EXIT_GRACE};
use crate::probe::Probe;
use crate::qtest::Qtest;
use crate::run_dir::RunDir;
use crate::shutdown::{wait_exit, REAP_TIMEOUT};
use crate::spawn::spawn;

/// The child's ends of its socketpairs, kept open until QEMU is spawned.
#[derive(Default)]
struct ChildEnds(Vec<UnixStream>);

impl ChildEnds {
    /// A new socketpair: our end, and the number of the child's end (kept here).
    fn socketpair(&mut self, what: &str) -> Result<(UnixStream, RawFd)> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::io(format!("creating the {what} socketpair"), e))?;
        Ok((ours, self.add(theirs)?))
    }

    /// Hands `theirs` to the child under its current number (above the standard streams').
    fn add(&mut self, theirs: UnixStream) -> Result<RawFd> {
        let theirs: UnixStream = crate::spawn::above_stdio(theirs.into())
            .map_err(|e| Error::io("moving a socket above the standard streams", e))?
            .into();
        let fd = theirs.as_raw_fd();
        self.0.push(theirs);
        Ok(fd)
    }

    fn into_fds(self) -> Vec<OwnedFd> {
        self.0.into_iter().map(OwnedFd::from).collect()
    }
}

enum PendingQmp {
    Socketpair(UnixStream),
    Listener(Listener),
}

impl Machine {
    /// Spawns QEMU and waits (bounded) until QMP is ready, watching the child meanwhile: if
    /// QEMU exits first, the error carries its exit status, the command line and its output.
    /// Works again after shutdown (same configuration, new run dir).
    ///
    /// Cancel-safe: QEMU belongs to the machine from the moment it is spawned. If this
    /// future is dropped, QEMU is left running without QMP: [`kill`](Self::kill),
    /// [`shutdown`](Self::shutdown) or dropping the machine ends it.
    ///
    /// ```no_run
    /// # async fn f() -> qemu_machine::Result<()> {
    /// use qemu_machine::Machine;
    ///
    /// let mut vm = Machine::new(Machine::builder("qemu-system-x86_64").machine_type("none"));
    /// vm.launch().await?;
    /// let status = vm.cmd("query-status", ()).await?;
    /// assert_eq!(status["status"], "running");
    /// vm.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::AlreadyRunning`] when QEMU runs (or a dropped launch left it running);
    /// - [`ErrorKind::Config`] when the configuration cannot work;
    /// - [`ErrorKind::Io`] / [`ErrorKind::Qmp`] / a probe error when the run dir, log, sockets or
    ///   monitor cannot be set up (nothing was spawned);
    /// - [`ErrorKind::Launch`] when QEMU cannot be started, exits before QMP is ready, fails
    ///   the QMP handshake or is not ready within the launch timeout; the
    ///   [`LaunchFailure`] says which ([`LaunchReason`]), with status, command line and
    ///   output. QEMU is reaped by then, and the phase is finished.
    pub async fn launch(&mut self) -> Result<()> {
        if self.phase.process().is_some() {
            return Err(Error::new(
                self.config.name.clone(),
                ErrorKind::AlreadyRunning,
            ));
        }
        self.config = self.config().resolve()?;
        // One deadline for the whole launch: probe, spawn, QMP, and any grace after.
        let deadline = crate::deadline::deadline_after(self.config.launch_timeout);
        self.events.clear();
        if !matches!(self.phase, Phase::Configured) {
            self.enter(|_| (Phase::Configured, ()));
        }
        let name = self.config.name.clone();
        let qtest_accel = match self.config.qtest {
            true => Probe::of(&self.config.binary).await?.qtest_accel(),
            false => false,
        };
        let run_dir = RunDir::create(&self.config.base_temp_dir, &name)?;
        let log_dir = self
            .config
            .log_dir
            .clone()
            .unwrap_or_else(|| run_dir.path().to_path_buf());
        let log_path = log_dir.join(format!("{name}.log"));
        let log = create_private(&log_path)?;

        // QEMU's ends of its sockets, inherited under their own numbers.
        let mut child_ends = ChildEnds::default();
        let (monitor, pending) = if self.config.qmp_enabled {
            let (chardev, pending) =
                prepare_monitor(&self.config, run_dir.path(), &mut child_ends)?;
            (Some(chardev), Some(pending))
        } else {
            (None, None)
        };
        let console = self
            .config
            .console
            .is_some()
            .then(|| child_ends.socketpair("console"))
            .transpose()?;
        let qtest = self
            .config
            .qtest
            .then(|| child_ends.socketpair("qtest"))
            .transpose()?;
        let guest_agent = self
            .config
            .guest_agent
            .then(|| child_ends.socketpair("guest agent"))
            .transpose()?;
        let guest_image = if self.config.builtin_guest {
            let path = run_dir.path().join("builtin-guest.img");
            crate::guest::write_image(&path)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            Some(path)
        } else {
            None
        };
        // Started before QEMU, which connects to them at once; killed if the launch stops.
        let (daemons, virtiofs_ends) =
            crate::virtiofs::start(self.config.devices.virtiofs(), run_dir.path()).await?;
        let virtiofs = virtiofs_ends
            .into_iter()
            .map(|end| Ok(format!("fd={}", child_ends.add(end)?)))
            .collect::<Result<_>>()?;
        let console_log = match &self.config.console_log {
            Some(path) if console.is_some() => Some(create_private(path)?),
            _ => None,
        };
        let argv = command_line(
            &self.config,
            &Attachments {
                monitor,
                console_fd: console.as_ref().map(|c| c.1),
                guest_image: guest_image.as_deref(),
                qtest_fd: qtest.as_ref().map(|c| c.1),
                qtest_accel,
                guest_agent_fd: guest_agent.as_ref().map(|c| c.1),
                virtiofs,
            },
        );
        tracing::debug!(machine = %name, "launching: {}", shell_words(&redact_argv(&argv)));

        let add_fds: Vec<RawFd> = self.config.add_fds.iter().map(|a| a.fd).collect();
        // Cancel-safe: if this future is dropped here, the spawner kills and reaps the
        // child nobody will receive, and the run dir goes with `run_dir`.
        let contained = match spawn(&argv, child_ends.into_fds(), &add_fds, &log).await {
            Ok(contained) => contained,
            Err(e) => {
                let kept = run_dir.finish(self.config.keep_run_dir != KeepRunDir::Never);
                let failure = LaunchFailure {
                    reason: LaunchReason::Spawn {
                        program: argv[0].clone(),
                        source: e,
                    },
                    command: redact_argv(&argv),
                    status: None,
                    pid: None,
                    output: String::new(),
                    run_dir: kept.clone(),
                };
                self.enter(|_| {
                    let finished = Finished {
                        status: None,
                        argv,
                        log: String::new(),
                        kept_run_dir: kept,
                        console: None,
                    };
                    (Phase::Finished(finished), ())
                });
                return Err(Error::new(name, ErrorKind::Launch(Box::new(failure))));
            }
        };
        let mut running = Running {
            child: contained.child,
            pid: contained.pid,
            link: contained.link,
            argv,
            qmp: None,
            subscription: None,
            console: None,
            qtest: None,
            guest_agent: guest_agent.map(|g| g.0),
            agent: None,
            run_dir,
            log_path,
            daemons,
            quit_issued: false,
            signals_sent: Vec::new(),
            exit: None,
        };
        // Drained from the first byte: QEMU never blocks on it, and nothing is missed.
        let sessions = (|| {
            if let Some((ours, _)) = console {
                running.console = Some(Console::start(
                    name.clone(),
                    ours,
                    self.config.console_buffer,
                    console_log,
                )?);
            }
            if let Some((ours, _)) = qtest {
                running.qtest = Some(Qtest::open(name.clone(), ours, qtest_accel)?);
            }
            Ok::<_, Error>(())
        })();
        // From here on the phase owns QEMU: a dropped future cannot orphan it.
        self.enter(|_| (Phase::Launching(running), ()));
        if let Err(e) = sessions {
            return Err(self.fail_launch(LaunchReason::Setup(Box::new(e))).await);
        }
        if let Some(pending) = pending {
            let Phase::Launching(running) = &mut self.phase else {
                unreachable!("the phase was set just above")
            };
            if let Err(reason) = connect_qmp(&self.config, running, pending, deadline).await {
                return Err(self.fail_launch(reason).await);
            }
        }
        self.enter(|phase| match phase {
            Phase::Launching(running) => (Phase::Running(running), ()),
            other => (other, ()),
        });
        Ok(())
    }

    /// Ends a launch that failed after spawning: kills everything contained at once (a
    /// wrapper's children included; any grace was granted before, within the launch
    /// deadline), reaps the watchdog, finishes the run. The process stays in the phase until it is
    /// reaped (or given up on), so this is cancel-safe too.
    async fn fail_launch(&mut self, reason: LaunchReason) -> Error {
        let Some(running) = self.phase.process_mut() else {
            unreachable!("fail_launch runs while launching")
        };
        // Once the watchdog has exited, nothing it contained lingers (a wrapper's children
        // included): it kills and reaps them all before it exits.
        if running.exit.is_none() {
            running.sigkill();
            running.exit = wait_exit(&mut running.child, REAP_TIMEOUT).await;
        }
        running.close_sessions();
        let keep = self.config.keep_run_dir != KeepRunDir::Never;
        let stays = keep || self.config.log_dir.is_some();
        let tails = crate::log_file::finish(&running.log_path, &running.argv, stays, true);
        let (output, log) = (tails.error, tails.log);
        let name = self.config.name.clone();
        self.enter(|phase| {
            let (Phase::Launching(mut running) | Phase::Running(mut running)) = phase else {
                unreachable!("fail_launch runs while launching")
            };
            if let Some(console) = &running.console {
                console.stop();
            }
            let kept = running.run_dir.finish(keep);
            let failure = LaunchFailure {
                reason,
                command: redact_argv(&running.argv),
                status: running.exit,
                pid: Some(running.pid),
                output,
                run_dir: kept.clone(),
            };
            let finished = Finished {
                status: running.exit,
                argv: std::mem::take(&mut running.argv),
                log,
                kept_run_dir: kept,
                console: running.console.take(),
            };
            (
                Phase::Finished(finished),
                Error::new(name, ErrorKind::Launch(Box::new(failure))),
            )
        })
    }
}

/// Binds or creates the monitor socket; returns the chardev for the command line and our
/// side.
fn prepare_monitor(
    config: &Config,
    run_dir: &Path,
    child_ends: &mut ChildEnds,
) -> Result<(MonitorChardev, PendingQmp)> {
    let wrap = |e: qmp::Error| Error::qmp(config.name.clone(), e);
    Ok(match &config.monitor {
        Monitor::Socketpair => {
            let (ours, fd) = child_ends.socketpair("QMP")?;
            (MonitorChardev::Fd(fd), PendingQmp::Socketpair(ours))
        }
        Monitor::Unix(path) => {
            let path = run_dir.join(path);
            let listener = Listener::bind_unix(&path).map_err(wrap)?;
            (
                MonitorChardev::Unix(
                    path.to_str()
                        .ok_or_else(|| {
                            Error::config(format!(
                                "the monitor path {} is not UTF-8",
                                path.display()
                            ))
                        })?
                        .to_string(),
                ),
                PendingQmp::Listener(listener),
            )
        }
        Monitor::Tcp(host, port) => {
            let listener = Listener::bind_tcp(host, *port).map_err(wrap)?;
            let qmp::Address::Tcp(host, port) = listener.address().clone() else {
                unreachable!("a TCP listener has a TCP address")
            };
            (
                MonitorChardev::Tcp(host, port),
                PendingQmp::Listener(listener),
            )
        }
    })
}

/// Waits for the greeting and negotiation while watching the child; on failure returns
/// why, with the child still to be cleaned up.
async fn connect_qmp(
    config: &Config,
    running: &mut Running,
    pending: PendingQmp,
    deadline: tokio::time::Instant,
) -> std::result::Result<(), LaunchReason> {
    let timeout = config.launch_timeout;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut builder = qmp::Client::builder()
        .name(config.name.clone())
        .greeting_timeout(left)
        .subscribe_from_start(EventFilter::all());
    if config.qmp_transcript {
        builder = builder.transcript(running.run_dir.path().join("qmp.log"));
    }
    let connect = async move {
        match pending {
            PendingQmp::Socketpair(stream) => builder.adopt_unix(stream).await,
            PendingQmp::Listener(listener) => listener.accept(builder, left).await,
        }
    };
    let outcome = tokio::select! {
        client = connect => match client {
            Ok(client) => {
                running.subscription = client.take_initial_subscription();
                running.qmp = Some(client);
                return Ok(());
            }
            // The greeting deadline is the launch deadline: one kind, whichever fires first.
            Err(e) if e.is_timeout() => Ok(LaunchReason::QmpTimeout(timeout)),
            Err(e) => Err(e),
        },
        status = running.child.wait() => {
            running.exit = status.ok();
            return Err(LaunchReason::ExitedBeforeQmp);
        }
        _ = tokio::time::sleep_until(deadline) => Ok(LaunchReason::QmpTimeout(timeout)),
    };
    match outcome {
        Err(e) => {
            // QEMU closes its monitor first when it exits (a bad argument): it gets a short
            // grace to finish exiting, within the launch deadline.
            if e.is_disconnected() {
                let grace =
                    EXIT_GRACE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                running.exit = wait_exit(&mut running.child, grace).await;
                if running.exit.is_some() {
                    return Err(LaunchReason::ExitedBeforeQmp);
                }
            }
            Err(LaunchReason::Qmp(Box::new(e)))
        }
        Ok(reason) => Err(reason),
    }
}
