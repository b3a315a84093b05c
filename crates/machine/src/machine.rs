//! One VM's life: launch, talk, wait, shut down, with nothing left behind.
//!
//! The life is one [`Phase`], changed only by [`Machine::enter`], which logs every
//! transition. Launching ([`launch`](crate::launch)), the shutdown ladder
//! ([`shutdown`](crate::shutdown)) and the event cache ([`event_cache`](crate::event_cache))
//! live in their own modules; this one is the facade.
//!
//! Cancel-safety: a QEMU process is owned by the phase from the moment it is spawned until
//! it is reaped. No `await` happens while the process is out of the phase, so a future
//! dropped at any `await` leaves the machine consistent, and dropping the machine still
//! kills and reaps QEMU and removes its run dir.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::spawn::WatchdogChild as Child;
use nix::sys::signal::Signal;
use qmp::{Event, Request};
use serde_json::Value;

use crate::config::{Config, KeepRunDir, MachineBuilder};
use crate::console::Console;
use crate::error::{redact_argv, secrets_of, Error, ErrorKind, QemuExited, Result};
use crate::guest_agent::GuestAgent;
use crate::output::{read_tail, ERROR_TAIL};
use crate::qtest::Qtest;
use crate::run_dir::RunDir;
use crate::shutdown::{wait_exit, REAP_TIMEOUT};
use crate::spawn::{kill_contained, Link};

/// How long to wait for QEMU to finish exiting once it has closed its monitor.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A QEMU virtual machine, async form. See the crate docs for an example.
///
/// Dropping a machine whose QEMU runs (or is being launched, or shut down) kills QEMU (its
/// whole process group, and every process it or its wrapper started), reaps it and
/// removes the run dir. Every `async` method is cancel-safe in that sense: dropping its
/// future never orphans QEMU. Each QEMU runs under a small watchdog process of its own,
/// which kills all of that even when this process is SIGKILLed (see
/// `docs/reliability.md`, "Containment").
#[derive(Debug)]
pub struct Machine {
    /// What the user configures (see [`config_mut`](Machine::config_mut)).
    builder: MachineBuilder,
    /// What the current (or last) run uses: resolved from `builder` at each launch.
    pub(crate) config: Config,
    pub(crate) phase: Phase,
    /// Events pulled while waiting for others, oldest first.
    pub(crate) events: VecDeque<Event>,
    /// Events dropped from the full cache.
    pub(crate) events_dropped: u64,
    /// The newest events received, consumed or not (see [`Machine::event_history`]).
    pub(crate) history: crate::typed_qmp::EventHistory,
}

/// Where a machine is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Not launched yet (or a launch failed before QEMU was spawned).
    Configured,
    /// QEMU is spawned and QMP is not ready yet. A machine stays here only when the
    /// future of [`Machine::launch`] was dropped; shutdown and drop handle it as running.
    Launching(Running),
    /// QEMU runs and its sessions are up (it may have exited without us noticing yet).
    Running(Running),
    /// QEMU was reaped (after a shutdown, or a failed launch); what is left of the run.
    Finished(Finished),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Configured => "configured",
            Phase::Launching(_) => "launching",
            Phase::Running(_) => "running",
            Phase::Finished(_) => "finished",
        }
    }

    /// The live process, while launching or running.
    pub(crate) fn process(&self) -> Option<&Running> {
        match self {
            Phase::Launching(running) | Phase::Running(running) => Some(running),
            _ => None,
        }
    }

    pub(crate) fn process_mut(&mut self) -> Option<&mut Running> {
        match self {
            Phase::Launching(running) | Phase::Running(running) => Some(running),
            _ => None,
        }
    }

    /// The process once launched (sessions up).
    pub(crate) fn running(&self) -> Option<&Running> {
        match self {
            Phase::Running(running) => Some(running),
            _ => None,
        }
    }

    fn finished(&self) -> Option<&Finished> {
        match self {
            Phase::Finished(finished) => Some(finished),
            _ => None,
        }
    }
}

/// A spawned QEMU and everything attached to it.
#[derive(Debug)]
pub(crate) struct Running {
    /// The watchdog, which reports QEMU's exit status once QEMU and all it started are
    /// dead.
    pub(crate) child: Child,
    /// QEMU's pid (the wrapper's when there is one), the leader of its process group.
    pub(crate) pid: u32,
    /// Our end of the watchdog's link: dropping it ends the VM.
    pub(crate) link: Link,
    pub(crate) argv: Vec<String>,
    pub(crate) qmp: Option<qmp::Client>,
    pub(crate) subscription: Option<qmp::Subscription>,
    pub(crate) console: Option<Console>,
    pub(crate) qtest: Option<Qtest>,
    /// Our end of the guest agent's virtio-serial port, until the first session takes it.
    pub(crate) guest_agent: Option<UnixStream>,
    pub(crate) agent: Option<GuestAgent>,
    pub(crate) run_dir: RunDir,
    pub(crate) log_path: PathBuf,
    /// The virtiofs daemons: killed and reaped when this run is dropped.
    #[expect(
        dead_code,
        reason = "held for its Drop, which kills and reaps the daemons"
    )]
    pub(crate) daemons: Vec<crate::virtiofs::Daemon>,
    /// A `quit` was accepted (sent by the user, or by a shutdown whose future was dropped):
    /// the next shutdown only waits for QEMU to exit.
    pub(crate) quit_issued: bool,
    pub(crate) signals_sent: Vec<Signal>,
    pub(crate) exit: Option<ExitStatus>,
}

/// What is left of a run once QEMU is reaped.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) argv: Vec<String>,
    pub(crate) log: String,
    pub(crate) kept_run_dir: Option<PathBuf>,
    pub(crate) console: Option<Console>,
}

impl Running {
    /// Ends the QMP, qtest and guest-agent sessions (the console is handled apart: it
    /// stays readable after shutdown).
    pub(crate) fn close_sessions(&mut self) {
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

    /// SIGKILL to QEMU's group, and its watchdog told to kill every descendant (those
    /// that left the group too); recorded as sent by us.
    pub(crate) fn sigkill(&mut self) {
        if self.exit.is_some() {
            // The watchdog was reaped: all it contained is dead, and the pid may be reused.
            return;
        }
        self.signals_sent.push(Signal::SIGKILL);
        kill_contained(self.pid, &self.link);
    }

    /// SIGKILL to everything contained and a synchronous reap (bounded), for when no
    /// runtime can be relied on; then the sessions and the run dir go.
    fn kill_now(mut self, keep_run_dir: bool, log_kept: bool) {
        self.sigkill();
        crate::spawn::reap_child_within(&mut self.child, REAP_TIMEOUT);
        self.close_sessions();
        if let Some(console) = self.console.take() {
            console.stop();
        }
        if log_kept {
            crate::log_file::scrub_kept_log(&self.log_path, &secrets_of(&self.argv));
        }
        self.run_dir.finish(keep_run_dir);
    }
}

impl Machine {
    /// Starts configuring a machine that runs `binary`.
    ///
    /// ```
    /// use qemu_machine::Machine;
    ///
    /// let builder = Machine::builder("qemu-system-x86_64").machine_type("none");
    /// let vm = Machine::new(builder);
    /// ```
    pub fn builder(binary: impl Into<String>) -> MachineBuilder {
        MachineBuilder::new(binary)
    }

    /// A machine from a finished configuration (not launched yet).
    pub fn new(config: MachineBuilder) -> Machine {
        Machine {
            config: config.unresolved(),
            builder: config,
            phase: Phase::Configured,
            events: VecDeque::new(),
            events_dropped: 0,
            history: Default::default(),
        }
    }

    /// The only way the phase changes: `change` turns the phase left into the next one
    /// (and a value for the caller); the transition is logged once. `change` must not
    /// panic: it holds the process meanwhile.
    pub(crate) fn enter<R>(&mut self, change: impl FnOnce(Phase) -> (Phase, R)) -> R {
        let old = std::mem::replace(&mut self.phase, Phase::Configured);
        let from = old.name();
        let (next, out) = change(old);
        self.phase = next;
        tracing::debug!(
            machine = %self.config.name,
            from,
            to = self.phase.name(),
            pid = self.phase.process().map(|r| r.pid),
            "phase"
        );
        out
    }

    /// The configuration (for the next launch).
    pub fn config(&self) -> &MachineBuilder {
        &self.builder
    }

    /// Changes the configuration for the next launch (e.g. `add_args` between runs); a
    /// run under way keeps what it was launched with.
    pub fn config_mut(&mut self) -> &mut MachineBuilder {
        &mut self.builder
    }

    /// The machine's name: the configured one before the first launch, then the one of
    /// the current (or last) run.
    pub fn name(&self) -> &str {
        match self.phase {
            Phase::Configured => self.builder.name_str(),
            _ => &self.config.name,
        }
    }

    /// True while QEMU runs (launched, and not seen to exit).
    pub fn is_running(&mut self) -> bool {
        match self.phase.process_mut() {
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
        match &self.phase {
            Phase::Launching(running) | Phase::Running(running) => running.exit,
            Phase::Finished(finished) => finished.status,
            Phase::Configured => None,
        }
    }

    /// QEMU's pid while its process is ours (from spawn until it is reaped); with a
    /// [`wrapper`](MachineBuilder::wrapper), the wrapper's (the process the command line
    /// starts). It leads its own process group. Its parent is the machine's watchdog
    /// (`qemu-watchdog` in `ps`), not this process.
    pub fn pid(&self) -> Option<u32> {
        self.phase.process().map(|r| r.pid)
    }

    /// The full command line (redaction is for errors and logs, not here) of the current
    /// run, or of the last one, including a launch that failed after the command line was
    /// built. `None` before the first launch.
    pub fn command_line(&self) -> Option<&[String]> {
        match &self.phase {
            Phase::Launching(running) | Phase::Running(running) => Some(&running.argv),
            Phase::Finished(finished) => Some(&finished.argv),
            Phase::Configured => None,
        }
    }

    /// The private (0700) run directory while running (QEMUMachine's `temp_dir`).
    pub fn run_dir(&self) -> Option<&Path> {
        self.phase.process().map(|r| r.run_dir.path())
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
        self.phase
            .finished()
            .and_then(|l| l.kept_run_dir.as_deref())
    }

    /// QEMU's output (stdout and stderr) of the last run, available after shutdown or a
    /// failed launch: its last 1 MiB at most (a first line then says how much was left
    /// out, and where the whole log is if it was kept), with the command line's secrets
    /// (see [`redact_argv`](crate::redact_argv)) replaced by `<redacted>`. The text is
    /// QEMU's own: print it through something that escapes control characters.
    pub fn get_log(&self) -> Option<&str> {
        self.phase.finished().map(|l| l.log.as_str())
    }

    /// A clone of the QMP client, for concurrent use (e.g. from another task).
    pub fn qmp_client(&self) -> Option<qmp::Client> {
        self.phase.running().and_then(|r| r.qmp.clone())
    }

    /// The serial console (see [`Console`]): live while running; after shutdown, the last
    /// run's console, closed, with its output still readable.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoConsole`] when no console was configured (or before the first launch).
    pub fn console(&self) -> Result<Console> {
        let console = match &self.phase {
            Phase::Launching(running) | Phase::Running(running) => running.console.clone(),
            Phase::Finished(finished) => finished.console.clone(),
            Phase::Configured => None,
        };
        console.ok_or_else(|| Error::new(self.config.name.clone(), ErrorKind::NoConsole))
    }

    /// The qtest session (see [`MachineBuilder::qtest`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] when QEMU is not running, [`ErrorKind::NoQtest`] when no qtest
    /// session was configured.
    pub fn qtest(&self) -> Result<Qtest> {
        self.running_part(|running| running.qtest.clone(), ErrorKind::NoQtest)
    }

    /// What `part` takes from the running process: [`ErrorKind::NotRunning`] when QEMU is not
    /// running, `missing` when the process has no such part.
    fn running_part<T>(
        &self,
        part: impl FnOnce(&Running) -> Option<T>,
        missing: ErrorKind,
    ) -> Result<T> {
        let running = self
            .phase
            .running()
            .ok_or_else(|| Error::new(self.config.name.clone(), ErrorKind::NotRunning))?;
        part(running).ok_or_else(|| Error::new(self.config.name.clone(), missing))
    }

    /// A synced guest-agent session (see [`MachineBuilder::guest_agent`]): the first call
    /// waits, at most `timeout`, until qemu-ga in the guest answers, and fails at once if
    /// QEMU dies meanwhile; later calls resync the same session.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] when QEMU is not running; [`ErrorKind::NoGuestAgent`] when no
    /// guest-agent port was configured; [`ErrorKind::Exited`] when QEMU exits meanwhile;
    /// otherwise the session's [`ErrorKind::GuestAgent`] or [`ErrorKind::Timeout`].
    pub async fn guest_agent(&mut self, timeout: Duration) -> Result<GuestAgent> {
        let name = self.config.name.clone();
        let Phase::Running(running) = &mut self.phase else {
            return Err(Error::new(name, ErrorKind::NotRunning));
        };
        let child = &mut running.child;
        let alive = || matches!(child.try_wait(), Ok(None));
        let result = match &running.agent {
            Some(agent) => agent.sync(timeout, alive).await.map(|()| agent.clone()),
            None => {
                // A duplicate goes to the new session: if it fails, or this future is
                // dropped, the port stays here for the next call.
                let Some(stream) = running.guest_agent.as_ref() else {
                    return Err(Error::new(name, ErrorKind::NoGuestAgent));
                };
                let stream = stream
                    .try_clone()
                    .map_err(|e| Error::io("duplicating the guest agent socket", e))?;
                GuestAgent::over_stream(name, stream, timeout, alive).await
            }
        };
        match result {
            Ok(agent) => {
                if let Some(running) = self.phase.process_mut() {
                    running.guest_agent = None;
                    running.agent = Some(agent.clone());
                }
                Ok(agent)
            }
            Err(e) => Err(self.explain_exit(e, "the wait for the guest agent").await),
        }
    }

    /// If QEMU has exited (or is exiting), `error` becomes [`ErrorKind::Exited`] with its
    /// status, command line and output; otherwise it is returned as is.
    async fn explain_exit(&mut self, error: Error, during: &str) -> Error {
        match self.exited(Duration::from_millis(200), during).await {
            Some(exited) if exited.status.is_some() => {
                Error::new(self.config.name.clone(), ErrorKind::Exited(exited))
            }
            _ => error,
        }
    }

    /// What a caller needs to know once QEMU is gone (or going): waits up to `grace` for
    /// its exit status.
    pub(crate) async fn exited(
        &mut self,
        grace: Duration,
        during: &str,
    ) -> Option<Box<QemuExited>> {
        let running = self.phase.process_mut()?;
        if running.exit.is_none() {
            running.exit = wait_exit(&mut running.child, grace).await;
        }
        Some(Box::new(QemuExited {
            during: during.to_string(),
            status: running.exit,
            command: redact_argv(&running.argv),
            output: read_tail(
                &running.log_path,
                ERROR_TAIL,
                &secrets_of(&running.argv),
                self.config
                    .log_dir
                    .is_some()
                    .then_some(running.log_path.as_path()),
            ),
        }))
    }

    fn client(&self) -> Result<qmp::Client> {
        self.running_part(|running| running.qmp.clone(), ErrorKind::NoQmp)
    }

    /// Sends a command and returns the whole response (`{"return": ...}` or
    /// `{"error": ...}`); a QMP error is not a failure here. Arguments go as given (see
    /// [`conv_keys`](crate::conv_keys) for the seed's `_` to `-` conversion).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] / [`ErrorKind::NoQmp`] when there is no monitor to talk to;
    /// [`ErrorKind::Exited`] when QEMU exits before answering; [`ErrorKind::Qmp`] for a deadline
    /// or protocol error.
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

    /// Sends a command and returns its `return` value; a QMP error is an error. The
    /// arguments are anything that serialises to a JSON object: `json!({...})`, a
    /// struct, or `()` for none.
    ///
    /// # Errors
    ///
    /// As [`qmp`](Self::qmp), and [`ErrorKind::Qmp`] when QEMU answers with an error (see
    /// [`Error::qmp_class`]); [`ErrorKind::Config`] when the arguments do not serialise.
    pub async fn cmd(&mut self, name: &str, arguments: impl serde::Serialize) -> Result<Value> {
        let arguments = to_arguments(name, arguments)?;
        self.request(Request::new(name).arguments(arguments)).await
    }

    /// [`cmd`](Self::cmd) with all of [`qmp::Request`]'s options (deadline, oob, fds).
    ///
    /// # Errors
    ///
    /// As [`cmd`](Self::cmd).
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
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] / [`ErrorKind::NoQmp`], or [`ErrorKind::Qmp`] when sending fails.
    pub fn send_fd_scm(&self, fd: impl AsFd) -> Result<()> {
        self.client()?
            .send_fd(fd)
            .map_err(|source| Error::qmp(self.config.name.clone(), source))
    }

    /// Opens `path` read-only and sends that descriptor (QEMUMachine's
    /// `send_fd_scm(file_path=...)`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when `path` cannot be opened; otherwise as
    /// [`send_fd_scm`](Self::send_fd_scm).
    pub fn send_file_scm(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        self.send_fd_scm(file.as_fd())
    }

    pub(crate) fn mark_quit_issued(&mut self) {
        if let Some(running) = self.phase.process_mut() {
            running.quit_issued = true;
        }
    }

    /// Turns a QMP error into what happened: if QEMU is gone, say so, with its exit status
    /// and output.
    pub(crate) async fn explain(&mut self, error: qmp::Error, during: &str) -> Error {
        if !error.is_disconnected() {
            return Error::qmp(self.config.name.clone(), error);
        }
        match self.exited(EXIT_GRACE, during).await {
            Some(exited) => Error::new(self.config.name.clone(), ErrorKind::Exited(exited)),
            None => Error::new(self.config.name.clone(), ErrorKind::NotRunning),
        }
    }
}

/// Command arguments as JSON; `()` (null) means none.
pub(crate) fn to_arguments(name: &str, arguments: impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(arguments)
        .map_err(|e| Error::config(format!("the arguments of {name} do not serialise: {e}")))
}

impl Drop for Machine {
    fn drop(&mut self) {
        let keep = self.config.keep_run_dir == KeepRunDir::Always;
        if !matches!(self.phase, Phase::Launching(_) | Phase::Running(_)) {
            return;
        }
        let running = self.enter(|phase| match phase {
            Phase::Launching(running) | Phase::Running(running) => {
                (Phase::Configured, Some(running))
            }
            other => (other, None),
        });
        if let Some(running) = running {
            tracing::warn!(
                machine = %self.config.name,
                pid = running.pid,
                "machine dropped while QEMU runs: killing it"
            );
            // Reaped here, synchronously: no runtime may be around any more.
            running.kill_now(keep, keep || self.config.log_dir.is_some());
        }
    }
}
