//! The errors of a machine's life, each with what a person needs to diagnose it.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong with a machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// QEMU could not be started, or died or hung before QMP was ready.
    #[error(transparent)]
    Launch(Box<LaunchFailure>),
    /// Shutdown had to fall back to SIGKILL, or QEMU died on its own in a way nobody asked.
    #[error(transparent)]
    AbnormalShutdown(Box<AbnormalShutdown>),
    /// QEMU exited while we were talking to it or waiting for it.
    #[error(transparent)]
    Exited(Box<QemuExited>),
    /// A QMP error: a command error, a deadline, a protocol error.
    #[error("{machine}: {source}")]
    Qmp {
        /// The machine's name.
        machine: String,
        /// The QMP error.
        #[source]
        source: Box<qmp::Error>,
    },
    /// A wait (for an event, for exit) passed its deadline.
    #[error("{machine}: timed out after {after:?} waiting for {awaited}; {seen}")]
    Timeout {
        /// The machine's name.
        machine: String,
        /// What was awaited.
        awaited: String,
        /// How long.
        after: Duration,
        /// What was seen meanwhile.
        seen: String,
    },
    /// A console wait failed: the console closed, or a failure pattern appeared.
    #[error("{machine}: {problem}\n  last console output: {last_output:?}")]
    Console {
        /// The machine's name.
        machine: String,
        /// What happened.
        problem: String,
        /// The most recent console output.
        last_output: String,
    },
    /// A qtest command failed (`FAIL ...`), or its reply made no sense.
    #[error("{machine}: qtest `{command}` failed: {message}")]
    Qtest {
        /// The machine's name.
        machine: String,
        /// The command sent.
        command: String,
        /// QEMU's message, or what was wrong with the reply.
        message: String,
    },
    /// A guest-agent operation failed.
    #[error("{machine}: guest agent: {message}")]
    GuestAgent {
        /// The machine's name.
        machine: String,
        /// What went wrong.
        message: String,
    },
    /// A block job ended with an error.
    #[error("{machine}: job {job} failed: {message}")]
    Job {
        /// The machine's name.
        machine: String,
        /// The job id.
        job: String,
        /// QEMU's error.
        message: String,
    },
    /// A migration failed, or the destination did not take over.
    #[error("{machine}: {message}")]
    Migration {
        /// The machine that reported it.
        machine: String,
        /// What happened.
        message: String,
    },
    /// The machine has no console (see `MachineBuilder::console`).
    #[error("{0}: no console was configured")]
    NoConsole(String),
    /// `launch()` on a machine that runs.
    #[error("{0}: already launched")]
    AlreadyRunning(String),
    /// An operation that needs a running machine.
    #[error("{0}: not running")]
    NotRunning(String),
    /// An operation that needs the QMP monitor, which was disabled.
    #[error("{0}: the QMP monitor is disabled (set_qmp_monitor(false))")]
    NoQmp(String),
    /// The configuration cannot work.
    #[error("invalid machine configuration: {0}")]
    Config(String),
    /// A local I/O error (run dir, log file, sockets).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The QMP error class of a failed command (`"GenericError"`, ...), if that is what this is.
    pub fn qmp_class(&self) -> Option<&str> {
        match self {
            Error::Qmp { source, .. } => source.class(),
            _ => None,
        }
    }
}

/// Why and how a launch failed: exit status, the full command line and QEMU's output.
#[derive(Debug)]
pub struct LaunchFailure {
    /// The machine's name.
    pub machine: String,
    /// What went wrong.
    pub reason: String,
    /// The command line, wrapper included.
    pub command: Vec<String>,
    /// QEMU's exit status, when it exited.
    pub status: Option<ExitStatus>,
    /// The process (group) id, when it was spawned; it is gone by now.
    pub pid: Option<u32>,
    /// QEMU's output (stdout and stderr), or its last part.
    pub output: String,
    /// The run directory (if it was kept, it is still there).
    pub run_dir: Option<PathBuf>,
}

impl fmt::Display for LaunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: launching QEMU failed: {}",
            self.machine, self.reason
        )?;
        if let Some(status) = self.status {
            writeln!(f, "  {status}")?;
        }
        writeln!(f, "  command: {}", shell_words(&self.command))?;
        if let Some(dir) = &self.run_dir {
            writeln!(f, "  run dir: {}", dir.display())?;
        }
        write_output(f, &self.output)
    }
}

impl std::error::Error for LaunchFailure {}

/// Shutdown did not go as asked.
#[derive(Debug)]
pub struct AbnormalShutdown {
    /// The machine's name.
    pub machine: String,
    /// What went wrong (e.g. "no exit within 5s after quit").
    pub cause: String,
    /// How QEMU ended in the end.
    pub status: Option<ExitStatus>,
    /// The command line.
    pub command: Vec<String>,
    /// QEMU's output, or its last part.
    pub output: String,
}

impl fmt::Display for AbnormalShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: abnormal shutdown: {}", self.machine, self.cause)?;
        if let Some(status) = self.status {
            writeln!(f, "  {status}")?;
        }
        writeln!(f, "  command: {}", shell_words(&self.command))?;
        write_output(f, &self.output)
    }
}

impl std::error::Error for AbnormalShutdown {}

/// QEMU went away under us.
#[derive(Debug)]
pub struct QemuExited {
    /// The machine's name.
    pub machine: String,
    /// What we were doing.
    pub during: String,
    /// How it ended, if known yet.
    pub status: Option<ExitStatus>,
    /// The command line.
    pub command: Vec<String>,
    /// QEMU's output, or its last part.
    pub output: String,
}

impl fmt::Display for QemuExited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => writeln!(
                f,
                "{}: QEMU exited ({status}) during {}",
                self.machine, self.during
            )?,
            None => writeln!(
                f,
                "{}: QEMU closed its monitor during {}",
                self.machine, self.during
            )?,
        }
        writeln!(f, "  command: {}", shell_words(&self.command))?;
        write_output(f, &self.output)
    }
}

impl std::error::Error for QemuExited {}

fn write_output(f: &mut fmt::Formatter<'_>, output: &str) -> fmt::Result {
    if output.trim().is_empty() {
        return write!(f, "  output: (none)");
    }
    write!(f, "  output:")?;
    for line in output.trim_end().lines() {
        write!(f, "\n    {line}")?;
    }
    Ok(())
}

/// The command line as a person would type it (quoted where needed).
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=,./:@+%".contains(c))
            {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line with secrets replaced by `<redacted>`, for errors and logs:
/// `data=` of `-object secret,...` (key=value or JSON form) and `password=` values.
///
/// ```
/// let argv: Vec<String> = ["qemu", "-object", "secret,id=s0,data=hunter2", "-vnc", ":0,password=on"]
///     .map(String::from).to_vec();
/// assert_eq!(
///     qemu_machine::redact_argv(&argv).join(" "),
///     "qemu -object secret,id=s0,data=<redacted> -vnc :0,password=on"
/// );
/// ```
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    argv.iter().map(|arg| redact_option(arg)).collect()
}

fn redact_option(arg: &str) -> String {
    if arg.starts_with('{') {
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(arg) {
            if qmp::redact::redact_json(&mut value) {
                return value.to_string();
            }
        }
        return arg.to_string();
    }
    if !arg.contains('=') {
        return arg.to_string();
    }
    let parts: Vec<&str> = arg.split(',').collect();
    let secret_object = parts
        .iter()
        .any(|p| p.starts_with("secret") || *p == "qom-type=secret");
    parts
        .iter()
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let flag = matches!(value, "on" | "off" | "true" | "false");
            if (secret_object && key == "data") || (key == "password" && !flag) {
                format!("{key}={}", qmp::redact::REDACTED)
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
