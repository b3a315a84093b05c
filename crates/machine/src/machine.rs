//! One VM's life: launch, talk, wait, shut down, with nothing left behind.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use qmp::{Event, EventFilter, Listener, Request};
use serde_json::Value;
use tokio::process::Child;
use tokio::time::Instant;

use crate::argv::{command_line, Attachments, MonitorChardev};
use crate::config::{KeepRunDir, MachineBuilder, Monitor, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::console::Console;
use crate::error::{
    redact_argv, shell_words, AbnormalShutdown, Error, LaunchFailure, QemuExited, Result,
};
use crate::event_match::event_match;
use crate::guest_agent::GuestAgent;
use crate::probe::Probe;
use crate::qtest::Qtest;
use crate::run_dir::RunDir;
use crate::spawn::{group_alive, signal_group, spawn};

/// How much of QEMU's output an error quotes.
const OUTPUT_TAIL: u64 = 8 * 1024;
/// How long to wait for QEMU to finish exiting once it has closed its monitor.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long to wait, once QEMU has exited, for the console's last bytes.
const CONSOLE_FLUSH: Duration = Duration::from_millis(500);
/// How long reaping after SIGKILL may take before we call QEMU stuck.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// A QEMU virtual machine, async form. See the crate docs for an example.
///
/// Dropping a running machine kills QEMU (its whole process group) and reaps it.
#[derive(Debug)]
pub struct Machine {
    config: MachineBuilder,
    running: Option<Running>,
    /// Events pulled while waiting for others, oldest first.
    events: VecDeque<Event>,
    last: Option<Finished>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    pid: u32,
    argv: Vec<String>,
    qmp: Option<qmp::Client>,
    subscription: Option<qmp::Subscription>,
    console: Option<Console>,
    qtest: Option<Qtest>,
    /// Our end of the guest agent's virtio-serial port, until the first session takes it.
    guest_agent: Option<UnixStream>,
    agent: Option<GuestAgent>,
    run_dir: RunDir,
    log_path: PathBuf,
    quit_issued: bool,
    signals_sent: Vec<Signal>,
    exit: Option<ExitStatus>,
}

#[derive(Debug)]
struct Finished {
    status: Option<ExitStatus>,
    log: String,
    kept_run_dir: Option<PathBuf>,
    console: Option<Console>,
}

impl Running {
    /// Ends the QMP, qtest and guest-agent sessions (the console is handled apart: it
    /// stays readable after shutdown).
    fn close_sessions(&mut self) {
        if let Some(client) = self.qmp.take() {
            client.close();
        }
        if let Some(qtest) = self.qtest.take() {
            qtest.stop();
        }
        if let Some(agent) = self.agent.take() {
            agent.close();
        }
    }
}

/// The child's ends of its socketpairs, kept open until QEMU is spawned.
#[derive(Default)]
struct ChildEnds(Vec<UnixStream>);

impl ChildEnds {
    /// A new socketpair: our end, and the number of the child's end (kept here).
    fn socketpair(&mut self, what: &str) -> Result<(UnixStream, RawFd)> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::io(format!("creating the {what} socketpair"), e))?;
        let fd = theirs.as_raw_fd();
        self.0.push(theirs);
        Ok((ours, fd))
    }

    fn fds(&self) -> Vec<RawFd> {
        self.0.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

enum PendingQmp {
    Socketpair(UnixStream),
    Listener(Listener),
}

impl Machine {
    /// Starts configuring a machine that runs `binary`.
    pub fn builder(binary: impl Into<String>) -> MachineBuilder {
        MachineBuilder::new(binary)
    }

    /// A machine from a finished configuration (not launched yet).
    pub fn new(config: MachineBuilder) -> Machine {
        Machine {
            config,
            running: None,
            events: VecDeque::new(),
            last: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MachineBuilder {
        &self.config
    }

    /// Changes the configuration for the next launch (e.g. `add_args` between runs).
    pub fn config_mut(&mut self) -> &mut MachineBuilder {
        &mut self.config
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Spawns QEMU and waits (bounded) until QMP is ready, watching the child meanwhile: if
    /// QEMU exits first, the error carries its exit status, the command line and its output.
    /// Works again after shutdown (same configuration, new run dir).
    pub async fn launch(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Err(Error::AlreadyRunning(self.config.name.clone()));
        }
        self.config.validate()?;
        self.events.clear();
        self.last = None;
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
            let (chardev, pending) = self.prepare_monitor(run_dir.path(), &mut child_ends)?;
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
            },
        );
        tracing::debug!(machine = %name, "launching: {}", shell_words(&redact_argv(&argv)));

        let mut inherit = child_ends.fds();
        inherit.extend(self.config.add_fds.iter().map(|a| a.fd));
        let child = match spawn(&argv, inherit, &log).await {
            Ok(child) => child,
            Err(e) => {
                let kept = run_dir.finish(self.config.keep_run_dir != KeepRunDir::Never);
                return Err(Error::Launch(Box::new(LaunchFailure {
                    machine: name,
                    reason: format!("cannot start {}: {e}", argv[0]),
                    command: redact_argv(&argv),
                    status: None,
                    pid: None,
                    output: String::new(),
                    run_dir: kept,
                })));
            }
        };
        // QEMU has its ends now; ours must not keep them open.
        drop(child_ends);
        let pid = child.id().unwrap_or(0);
        // Drained from the first byte: QEMU never blocks on it, and nothing is missed.
        let console = match console {
            Some((ours, _)) => Some(Console::start(
                name.clone(),
                ours,
                self.config.console_buffer,
                console_log,
            )?),
            None => None,
        };
        let qtest = match qtest {
            Some((ours, _)) => Some(Qtest::start(name.clone(), ours, qtest_accel)?),
            None => None,
        };
        let mut running = Running {
            child,
            pid,
            argv,
            qmp: None,
            subscription: None,
            console,
            qtest,
            guest_agent: guest_agent.map(|g| g.0),
            agent: None,
            run_dir,
            log_path,
            quit_issued: false,
            signals_sent: Vec::new(),
            exit: None,
        };
        if let Some(pending) = pending {
            if let Err(reason) = self.connect_qmp(&mut running, pending).await {
                return Err(self.fail_launch(running, reason).await);
            }
        }
        tracing::debug!(machine = %name, pid, "running");
        self.running = Some(running);
        Ok(())
    }

    /// Binds or creates the monitor socket; returns the chardev for the command line and
    /// our side.
    fn prepare_monitor(
        &self,
        run_dir: &Path,
        child_ends: &mut ChildEnds,
    ) -> Result<(MonitorChardev, PendingQmp)> {
        let wrap = |e: qmp::Error| Error::Qmp {
            machine: self.config.name.clone(),
            source: Box::new(e),
        };
        Ok(match &self.config.monitor {
            Monitor::Socketpair => {
                let (ours, fd) = child_ends.socketpair("QMP")?;
                (MonitorChardev::Fd(fd), PendingQmp::Socketpair(ours))
            }
            Monitor::Unix(path) => {
                let path = run_dir.join(path);
                let listener = Listener::bind_unix(&path).map_err(wrap)?;
                (
                    MonitorChardev::Unix(path.display().to_string()),
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
    /// the reason, with the child still to be cleaned up.
    async fn connect_qmp(
        &self,
        running: &mut Running,
        pending: PendingQmp,
    ) -> std::result::Result<(), String> {
        let timeout = self.config.launch_timeout;
        let mut builder = qmp::Client::builder()
            .name(self.config.name.clone())
            .greeting_timeout(timeout)
            .subscribe_from_start(EventFilter::all());
        if self.config.qmp_transcript {
            builder = builder.transcript(running.run_dir.path().join("qmp.log"));
        }
        let connect = async move {
            match pending {
                PendingQmp::Socketpair(stream) => builder.adopt_unix(stream).await,
                PendingQmp::Listener(listener) => listener.accept(builder, timeout).await,
            }
        };
        tokio::select! {
            client = connect => match client {
                Ok(client) => {
                    running.subscription = client.take_initial_subscription();
                    running.qmp = Some(client);
                    Ok(())
                }
                Err(e) => Err(format!("QMP did not come up: {e}")),
            },
            status = running.child.wait() => {
                running.exit = status.ok();
                Err("QEMU exited before QMP was ready".into())
            }
            _ = tokio::time::sleep(timeout) => {
                Err(format!("QMP was not ready within {timeout:?}"))
            }
        }
    }

    async fn fail_launch(&self, mut running: Running, reason: String) -> Error {
        if running.exit.is_none() {
            // It may be exiting right now (a bad argument closes the monitor first).
            running.exit = wait_exit(&mut running.child, EXIT_GRACE).await;
        }
        if running.exit.is_none() {
            signal_group(running.pid, Signal::SIGKILL);
            running.exit = wait_exit(&mut running.child, REAP_TIMEOUT).await;
        }
        let output = read_tail(&running.log_path, u64::MAX);
        let kept = running
            .run_dir
            .finish(self.config.keep_run_dir != KeepRunDir::Never);
        Error::Launch(Box::new(LaunchFailure {
            machine: self.config.name.clone(),
            reason,
            command: redact_argv(&running.argv),
            status: running.exit,
            pid: Some(running.pid),
            output,
            run_dir: kept,
        }))
    }

    /// True while QEMU runs (launched, and not seen to exit).
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Some(running) => {
                if running.exit.is_none() {
                    running.exit = running.child.try_wait().ok().flatten();
                }
                running.exit.is_none()
            }
            None => false,
        }
    }

    /// QEMU's exit status: `None` while it runs or before launch.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            return None;
        }
        match &self.running {
            Some(running) => running.exit,
            None => self.last.as_ref().and_then(|l| l.status),
        }
    }

    /// QEMU's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// The full command line of the current (or last failed) run.
    pub fn command_line(&self) -> Option<&[String]> {
        self.running.as_ref().map(|r| r.argv.as_slice())
    }

    /// The private (0700) run directory while running (QEMUMachine's `temp_dir`).
    pub fn run_dir(&self) -> Option<&Path> {
        self.running.as_ref().map(|r| r.run_dir.path())
    }

    /// Where `<name>.log` is written: the configured log dir, else the run dir.
    pub fn log_dir(&self) -> Option<PathBuf> {
        self.config
            .log_dir
            .clone()
            .or_else(|| self.run_dir().map(Path::to_path_buf))
    }

    /// The run dir kept after the last run (see [`KeepRunDir`]).
    pub fn kept_run_dir(&self) -> Option<&Path> {
        self.last.as_ref().and_then(|l| l.kept_run_dir.as_deref())
    }

    /// QEMU's output (stdout and stderr) of the last run, available after shutdown.
    pub fn get_log(&self) -> Option<&str> {
        self.last.as_ref().map(|l| l.log.as_str())
    }

    /// A clone of the QMP client, for concurrent use (e.g. from another task).
    pub fn qmp_client(&self) -> Option<qmp::Client> {
        self.running.as_ref().and_then(|r| r.qmp.clone())
    }

    /// The serial console (see [`Console`]): live while running; after shutdown, the last
    /// run's console, closed, with its output still readable.
    pub fn console(&self) -> Result<Console> {
        let console = match &self.running {
            Some(running) => running.console.clone(),
            None => self.last.as_ref().and_then(|l| l.console.clone()),
        };
        console.ok_or_else(|| Error::NoConsole(self.config.name.clone()))
    }

    /// The qtest session (see [`MachineBuilder::qtest`]).
    pub fn qtest(&self) -> Result<Qtest> {
        let running = self
            .running
            .as_ref()
            .ok_or_else(|| Error::NotRunning(self.config.name.clone()))?;
        running.qtest.clone().ok_or_else(|| {
            Error::Config(format!(
                "{}: no qtest session was configured",
                self.config.name
            ))
        })
    }

    /// A synced guest-agent session (see [`MachineBuilder::guest_agent`]): the first call
    /// waits, at most `timeout`, until qemu-ga in the guest answers, and fails at once if
    /// QEMU dies meanwhile; later calls resync the same session.
    pub async fn guest_agent(&mut self, timeout: Duration) -> Result<GuestAgent> {
        let name = self.config.name.clone();
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| Error::NotRunning(name.clone()))?;
        let child = &mut running.child;
        let alive = || matches!(child.try_wait(), Ok(None));
        let result = match &running.agent {
            Some(agent) => agent.sync(timeout, alive).await.map(|()| agent.clone()),
            None => {
                let stream = running.guest_agent.take().ok_or_else(|| {
                    Error::Config(format!("{name}: no guest agent port was configured"))
                })?;
                GuestAgent::over_stream(name, stream, timeout, alive).await
            }
        };
        match result {
            Ok(agent) => {
                running.agent = Some(agent.clone());
                Ok(agent)
            }
            Err(e) => Err(self.explain_exit(e, "the wait for the guest agent").await),
        }
    }

    /// If QEMU has exited (or is exiting), `error` becomes [`Error::Exited`] with its
    /// status, command line and output; otherwise it is returned as is.
    async fn explain_exit(&mut self, error: Error, during: &str) -> Error {
        match self.exited(Duration::from_millis(200), during).await {
            Some(exited) if exited.status.is_some() => Error::Exited(exited),
            _ => error,
        }
    }

    /// What a caller needs to know once QEMU is gone (or going): waits up to `grace` for
    /// its exit status.
    async fn exited(&mut self, grace: Duration, during: &str) -> Option<Box<QemuExited>> {
        let running = self.running.as_mut()?;
        if running.exit.is_none() {
            running.exit = wait_exit(&mut running.child, grace).await;
        }
        Some(Box::new(QemuExited {
            machine: self.config.name.clone(),
            during: during.to_string(),
            status: running.exit,
            command: redact_argv(&running.argv),
            output: read_tail(&running.log_path, OUTPUT_TAIL),
        }))
    }

    fn client(&self) -> Result<qmp::Client> {
        let running = self
            .running
            .as_ref()
            .ok_or_else(|| Error::NotRunning(self.config.name.clone()))?;
        running
            .qmp
            .clone()
            .ok_or_else(|| Error::NoQmp(self.config.name.clone()))
    }

    /// Sends a command and returns the whole response (`{"return": ...}` or
    /// `{"error": ...}`); a QMP error is not a failure here. Arguments go as given (see
    /// [`conv_keys`](crate::conv_keys) for the seed's `_` to `-` conversion).
    pub async fn qmp(&mut self, name: &str, arguments: Value) -> Result<Value> {
        let client = self.client()?;
        match client.send(Request::new(name).arguments(arguments)).await {
            Ok(response) => {
                if name == "quit" && response.result.is_ok() {
                    self.mark_quit_issued();
                }
                Ok(response.to_json_without_id())
            }
            Err(e) => Err(self.explain(e, name).await),
        }
    }

    /// Sends a command and returns its `return` value; a QMP error is an error.
    pub async fn cmd(&mut self, name: &str, arguments: Value) -> Result<Value> {
        self.request(Request::new(name).arguments(arguments)).await
    }

    /// [`cmd`](Self::cmd) with all of [`qmp::Request`]'s options (deadline, oob, fds).
    pub async fn request(&mut self, request: Request) -> Result<Value> {
        let client = self.client()?;
        let name = request.name().to_string();
        match client.execute_request(request).await {
            Ok(value) => {
                if name == "quit" {
                    self.mark_quit_issued();
                }
                Ok(value)
            }
            Err(e) => Err(self.explain(e, &name).await),
        }
    }

    /// Sends a file descriptor over the QMP socket (SCM_RIGHTS), for a following `getfd`
    /// or `add-fd` (QEMUMachine's `send_fd_scm(fd=...)`).
    pub fn send_fd_scm(&self, fd: impl AsFd) -> Result<()> {
        self.client()?.send_fd(fd).map_err(|source| Error::Qmp {
            machine: self.config.name.clone(),
            source: Box::new(source),
        })
    }

    /// Opens `path` read-only and sends that descriptor (QEMUMachine's
    /// `send_fd_scm(file_path=...)`).
    pub fn send_file_scm(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        self.send_fd_scm(file.as_fd())
    }

    fn mark_quit_issued(&mut self) {
        if let Some(running) = &mut self.running {
            running.quit_issued = true;
        }
    }

    /// Turns a QMP error into what happened: if QEMU is gone, say so, with its exit status
    /// and output.
    async fn explain(&mut self, error: qmp::Error, during: &str) -> Error {
        if !error.is_disconnected() {
            return Error::Qmp {
                machine: self.config.name.clone(),
                source: Box::new(error),
            };
        }
        match self.exited(EXIT_GRACE, during).await {
            Some(exited) => Error::Exited(exited),
            None => Error::NotRunning(self.config.name.clone()),
        }
    }

    /// The oldest event not yet consumed, without waiting.
    pub fn get_qmp_event(&mut self) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        self.pull_now()
    }

    /// The oldest event not yet consumed, waiting up to `timeout` for one.
    pub async fn get_qmp_event_wait(&mut self, timeout: Duration) -> Result<Event> {
        if let Some(event) = self.get_qmp_event() {
            return Ok(event);
        }
        self.events_wait_filtered(|_| true, "any event".into(), timeout)
            .await
    }

    /// Every event not yet consumed, in arrival order (the seed returns them out of order).
    pub fn get_qmp_events(&mut self) -> Vec<Event> {
        self.pull_all();
        self.events.drain(..).collect()
    }

    /// Drops the queued events for which `unwanted` holds (e.g. duplicates of one already
    /// handled), keeping the others in order.
    pub fn forget_events(&mut self, unwanted: impl Fn(&Event) -> bool) {
        self.pull_all();
        self.events.retain(|e| !unwanted(e));
    }

    /// Forgets every event not yet consumed.
    pub fn clear_events(&mut self) {
        self.get_qmp_events();
    }

    /// Moves every event queued now behind the ones already cached, keeping arrival order.
    fn pull_all(&mut self) {
        while let Some(event) = self.pull_now() {
            self.events.push_back(event);
        }
    }

    fn pull_now(&mut self) -> Option<Event> {
        let subscription = self.running.as_mut()?.subscription.as_mut()?;
        loop {
            match subscription.try_recv()? {
                Ok(event) => return Some(event),
                Err(qmp::Error::EventsLost(n)) => {
                    tracing::warn!(machine = %self.config.name, "{n} QMP events were lost (queue full)")
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for an event named `name` whose JSON contains `pattern` (see
    /// [`event_match`](crate::event_match)), under one deadline. Events that do not match
    /// are kept, in order, for later calls.
    pub async fn event_wait(
        &mut self,
        name: &str,
        pattern: Option<Value>,
        timeout: Duration,
    ) -> Result<Event> {
        self.events_wait(&[(name, pattern)], timeout).await
    }

    /// Waits for the first event that matches any of `wanted` (name and optional pattern),
    /// under one overall deadline however many other events arrive.
    pub async fn events_wait(
        &mut self,
        wanted: &[(&str, Option<Value>)],
        timeout: Duration,
    ) -> Result<Event> {
        let describe = wanted
            .iter()
            .map(|(name, pattern)| match pattern {
                Some(p) => format!("{name} matching {p}"),
                None => name.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" or ");
        let matches = |event: &Event| {
            wanted.iter().any(|(name, pattern)| {
                event.name() == *name
                    && pattern
                        .as_ref()
                        .is_none_or(|p| event_match(&event.to_json(), p))
            })
        };
        self.events_wait_filtered(matches, format!("event {describe}"), timeout)
            .await
    }

    async fn events_wait_filtered(
        &mut self,
        matches: impl Fn(&Event) -> bool,
        awaited: String,
        timeout: Duration,
    ) -> Result<Event> {
        if let Some(index) = self.events.iter().position(&matches) {
            return Ok(self.events.remove(index).unwrap_or_else(|| unreachable!()));
        }
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(subscription) = self.running.as_mut().and_then(|r| r.subscription.as_mut())
            else {
                return Err(Error::NotRunning(self.config.name.clone()));
            };
            match subscription.recv_timeout(left).await {
                Ok(event) if matches(&event) => return Ok(event),
                Ok(event) => {
                    seen.push(event.name().to_string());
                    self.events.push_back(event);
                }
                Err(qmp::Error::EventsLost(n)) => {
                    tracing::warn!(machine = %self.config.name, "{n} QMP events were lost (queue full)");
                }
                Err(qmp::Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        machine: self.config.name.clone(),
                        awaited,
                        after: timeout,
                        seen: if seen.is_empty() {
                            "no other event arrived".into()
                        } else {
                            format!("other events meanwhile: {}", seen.join(", "))
                        },
                    })
                }
                Err(e) => return Err(self.explain(e, &format!("the wait for {awaited}")).await),
            }
        }
    }

    /// Graceful shutdown with the default deadline (30 s): see [`shutdown_timeout`](Self::shutdown_timeout).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.shutdown_timeout(DEFAULT_SHUTDOWN_TIMEOUT).await
    }

    /// Closes the console (so QEMU cannot block on it), sends `quit` (SIGTERM when QMP is
    /// disabled), and waits up to `timeout`; then SIGKILL, reap, and
    /// [`Error::AbnormalShutdown`] with the cause. Also reports QEMU dying of a signal
    /// nobody here sent. A no-op when not running.
    pub async fn shutdown_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.do_shutdown(false, timeout).await
    }

    /// Waits up to `timeout` for QEMU to exit by itself (e.g. the guest powered off),
    /// sending nothing; then as [`shutdown_timeout`](Self::shutdown_timeout).
    pub async fn wait(&mut self, timeout: Duration) -> Result<()> {
        self.mark_quit_issued();
        self.do_shutdown(false, timeout).await
    }

    /// SIGKILL at once, then reap. Not reported as abnormal.
    pub async fn kill(&mut self) -> Result<()> {
        self.do_shutdown(true, REAP_TIMEOUT).await
    }

    async fn do_shutdown(&mut self, hard: bool, timeout: Duration) -> Result<()> {
        let Some(mut running) = self.running.take() else {
            return Ok(());
        };
        // The console keeps draining while QEMU shuts down (it cannot block QEMU), so the
        // guest's last words are kept.
        let mut cause = None;
        if hard {
            running.signals_sent.push(Signal::SIGKILL);
            signal_group(running.pid, Signal::SIGKILL);
        } else if running.exit.is_none() {
            let deadline = Instant::now() + timeout;
            let asked = if running.quit_issued {
                "waiting for QEMU to exit by itself"
            } else if let Some(client) = &running.qmp {
                tracing::debug!(machine = %self.config.name, "asking QEMU to quit");
                match client
                    .execute_request(Request::new("quit").timeout(timeout))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_disconnected() => {}
                    Err(e) => cause = Some(format!("`quit` failed: {e}")),
                }
                "quit"
            } else {
                running.signals_sent.push(Signal::SIGTERM);
                signal_group(running.pid, Signal::SIGTERM);
                "SIGTERM"
            };
            if cause.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                running.exit = wait_exit(&mut running.child, left).await;
                if running.exit.is_none() {
                    cause = Some(format!("QEMU did not exit within {timeout:?} ({asked})"));
                }
            }
            if cause.is_some() {
                running.signals_sent.push(Signal::SIGKILL);
                signal_group(running.pid, Signal::SIGKILL);
            }
        }
        if running.exit.is_none() {
            running.exit = wait_exit(&mut running.child, REAP_TIMEOUT).await;
            if running.exit.is_none() {
                cause.get_or_insert_with(|| {
                    format!(
                        "QEMU (pid {}) could not be reaped after SIGKILL",
                        running.pid
                    )
                });
            }
        }
        if let Some(console) = &running.console {
            console.close(CONSOLE_FLUSH).await;
        }
        self.finish(running, cause)
    }

    fn finish(&mut self, mut running: Running, mut cause: Option<String>) -> Result<()> {
        running.close_sessions();
        if let Some(mut subscription) = running.subscription.take() {
            self.events.extend(subscription.drain());
        }
        // A wrapper's children are in the group too; none may outlive the run.
        if group_alive(running.pid) {
            signal_group(running.pid, Signal::SIGKILL);
        }
        if let Some(signal) = running.exit.and_then(|s| s.signal()) {
            let sent = running.signals_sent.iter().any(|s| *s as i32 == signal);
            if !sent {
                let name = Signal::try_from(signal)
                    .map_or_else(|_| signal.to_string(), |s| s.as_str().to_string());
                tracing::warn!(
                    machine = %self.config.name,
                    "qemu received signal {signal} ({name}) that this library did not send; command: {}",
                    shell_words(&redact_argv(&running.argv))
                );
                cause.get_or_insert_with(|| {
                    format!("QEMU was killed by signal {signal} ({name}), which nobody here sent")
                });
            }
        }
        let log = read_tail(&running.log_path, u64::MAX);
        let keep = match self.config.keep_run_dir {
            KeepRunDir::Always => true,
            KeepRunDir::OnFailure => cause.is_some(),
            KeepRunDir::Never => false,
        };
        let kept_run_dir = running.run_dir.finish(keep);
        let status = running.exit;
        self.last = Some(Finished {
            status,
            log: log.clone(),
            kept_run_dir,
            console: running.console.take(),
        });
        match cause {
            None => Ok(()),
            Some(cause) => Err(Error::AbnormalShutdown(Box::new(AbnormalShutdown {
                machine: self.config.name.clone(),
                cause,
                status,
                command: redact_argv(&running.argv),
                output: tail_of(&log, OUTPUT_TAIL as usize),
            }))),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        tracing::warn!(machine = %self.config.name, pid = running.pid, "machine dropped while running: killing QEMU");
        signal_group(running.pid, Signal::SIGKILL);
        // Reap here, synchronously: no runtime may be around any more.
        let deadline = std::time::Instant::now() + REAP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match running.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        running.close_sessions();
        if let Some(console) = running.console.take() {
            console.stop();
        }
        running
            .run_dir
            .finish(self.config.keep_run_dir == KeepRunDir::Always);
    }
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => {
            tracing::warn!("waiting for QEMU failed: {e}");
            None
        }
        Err(_) => None,
    }
}

fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// The last `limit` bytes of a file, as text.
fn read_tail(path: &Path, limit: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        let _ = file.seek(SeekFrom::Start(len - limit));
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail_of(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
