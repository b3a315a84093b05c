//! The errors of a machine's life, each with what a person needs to diagnose it.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong with a machine: which machine (carried here, once) and
/// what happened ([`ErrorKind`]). Match on [`kind`](Error::kind).
#[derive(Debug)]
pub struct Error {
    machine: Option<String>,
    kind: ErrorKind,
}

/// What went wrong (see [`Error::kind`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
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
    #[error("{0}")]
    Qmp(#[source] Box<qmp::Error>),
    /// A wait (for an event, for exit, for a reply) passed its deadline.
    #[error("timed out after {after:?} waiting for {awaited}; {seen}")]
    Timeout {
        /// What was awaited.
        awaited: String,
        /// How long.
        after: Duration,
        /// What was seen meanwhile.
        seen: String,
    },
    /// A console wait failed: the console closed, or a failure pattern appeared.
    #[error("{problem}\n  last console output: {last_output:?}")]
    Console {
        /// What happened.
        problem: String,
        /// The most recent console output.
        last_output: String,
    },
    /// A qtest command failed (`FAIL ...`), or its reply made no sense.
    #[error("qtest `{command}` failed: {message}")]
    Qtest {
        /// The command sent.
        command: String,
        /// QEMU's message, or what was wrong with the reply.
        message: String,
    },
    /// A guest-agent operation failed.
    #[error("guest agent: {message}")]
    GuestAgent {
        /// What went wrong.
        message: String,
    },
    /// A block job ended with an error.
    #[error("job {job} failed: {message}")]
    Job {
        /// The job id.
        job: String,
        /// QEMU's error.
        message: String,
    },
    /// A migration failed, or the destination did not take over.
    #[error("{message}")]
    Migration {
        /// What happened.
        message: String,
    },
    /// The machine has no console (see `MachineBuilder::console`).
    #[error("no console was configured")]
    NoConsole,
    /// `launch()` on a machine that runs.
    #[error("already launched")]
    AlreadyRunning,
    /// An operation that needs a running machine.
    #[error("not running")]
    NotRunning,
    /// An operation that needs the QMP monitor, which was disabled.
    #[error("the QMP monitor is disabled (qmp_monitor(false))")]
    NoQmp,
    /// [`Machine::qtest`](crate::Machine::qtest) on a machine configured without qtest.
    #[error("no qtest session was configured")]
    NoQtest,
    /// [`Machine::guest_agent`](crate::Machine::guest_agent) on a machine configured
    /// without a guest-agent port.
    #[error("no guest agent port was configured")]
    NoGuestAgent,
    /// Asking the QEMU binary about itself ([`Probe`](crate::Probe)) failed: a query
    /// exited with an error, or its answer made no sense.
    #[error("probing {binary}: {message}")]
    Probe {
        /// The QEMU binary.
        binary: String,
        /// What went wrong.
        message: String,
    },
    /// QEMU's answer lacked what was looked for (e.g. no host forward in `info usernet`).
    #[error("{message}")]
    Unexpected {
        /// What was missing.
        message: String,
    },
    /// The configuration (or an argument) cannot work; never a runtime condition.
    #[error("invalid machine configuration: {0}")]
    Config(String),
    /// A saved state that does not fit this machine: saved from another configuration, or
    /// a disk changed since it was saved ([`Machine::launch_restored`](crate::Machine)).
    #[error("{0}")]
    StaleState(String),
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(machine) = &self.machine {
            write!(f, "{machine}: ")?;
        }
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

impl From<ErrorKind> for Error {
    /// An error about no machine in particular.
    fn from(kind: ErrorKind) -> Self {
        Error {
            machine: None,
            kind,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of the machine (or QEMU binary) `machine`.
    pub(crate) fn new(machine: impl Into<String>, kind: ErrorKind) -> Self {
        Error {
            machine: Some(machine.into()),
            kind,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ErrorKind::Io {
            context: context.into(),
            source,
        }
        .into()
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        ErrorKind::Config(message.into()).into()
    }

    pub(crate) fn qmp(machine: impl Into<String>, source: qmp::Error) -> Self {
        Error::new(machine, ErrorKind::Qmp(Box::new(source)))
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// What went wrong, by value.
    pub fn into_kind(self) -> ErrorKind {
        self.kind
    }

    /// The machine (or, for a probe, the QEMU binary) the error is about, if any.
    pub fn machine(&self) -> Option<&str> {
        self.machine.as_deref()
    }

    /// The QMP error class of a failed command (`"GenericError"`, ...), if that is what this is.
    pub fn qmp_class(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Qmp(source) => source.class(),
            _ => None,
        }
    }
}

/// The launch stage that failed, with its cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum LaunchReason {
    /// QEMU (or its wrapper) could not be started.
    Spawn {
        /// The program that was to run.
        program: String,
        /// Why not.
        source: std::io::Error,
    },
    /// The console or qtest session could not be set up after spawning.
    Setup(Box<Error>),
    /// QEMU exited before QMP was ready.
    ExitedBeforeQmp,
    /// The QMP greeting or negotiation failed (other than by its deadline).
    Qmp(Box<qmp::Error>),
    /// QMP was not ready within the launch timeout (no greeting, or no negotiation).
    QmpTimeout(Duration),
}

impl fmt::Display for LaunchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchReason::Spawn { program, source } => {
                write!(f, "cannot start {program}: {source}")
            }
            LaunchReason::Setup(e) => write!(f, "setting up QEMU's sessions failed: {e}"),
            LaunchReason::ExitedBeforeQmp => f.write_str("QEMU exited before QMP was ready"),
            LaunchReason::Qmp(e) => write!(f, "QMP did not come up: {e}"),
            LaunchReason::QmpTimeout(after) => write!(f, "QMP was not ready within {after:?}"),
        }
    }
}

/// The rung of the shutdown ladder that failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShutdownCause {
    /// `quit` was refused, or got no answer in time.
    QuitFailed(Box<qmp::Error>),
    /// QEMU did not exit within `after` of being asked (`stop`).
    NoExit {
        /// The shutdown deadline.
        after: Duration,
        /// What had been done to make it exit.
        stop: crate::Stop,
    },
    /// QEMU died of a signal nobody here sent.
    UnsentSignal {
        /// The signal number.
        signal: i32,
    },
    /// QEMU could not be reaped even after SIGKILL.
    NotReaped {
        /// Its pid.
        pid: u32,
    },
}

impl fmt::Display for ShutdownCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShutdownCause::QuitFailed(e) => write!(f, "`quit` failed: {e}"),
            ShutdownCause::NoExit { after, stop } => {
                write!(f, "QEMU did not exit within {after:?} ({stop})")
            }
            ShutdownCause::UnsentSignal { signal } => write!(
                f,
                "QEMU was killed by signal {signal} ({}), which nobody here sent",
                signal_name(*signal)
            ),
            ShutdownCause::NotReaped { pid } => {
                write!(f, "QEMU (pid {pid}) could not be reaped after SIGKILL")
            }
        }
    }
}

/// A signal's name (`SIGKILL`), or its number when it has none.
pub(crate) fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| signal.to_string(), |s| s.as_str().to_string())
}

/// Why and how a launch failed: exit status, the full command line and QEMU's output.
#[derive(Debug)]
pub struct LaunchFailure {
    /// Which stage failed, and why.
    pub reason: LaunchReason,
    /// The command line, wrapper included.
    pub command: Vec<String>,
    /// QEMU's exit status, when it exited.
    pub status: Option<ExitStatus>,
    /// The process (group) id, when it was spawned; it is gone by now.
    pub pid: Option<u32>,
    /// QEMU's output (stdout and stderr): its last 64 KiB and 200 lines at most (a first
    /// line then says how much was left out), the command line's secrets replaced by
    /// `<redacted>`. Raw text: the `Display` of this error escapes its control characters.
    pub output: String,
    /// The run directory (if it was kept, it is still there).
    pub run_dir: Option<PathBuf>,
}

impl fmt::Display for LaunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "launching QEMU failed: {}", self.reason)?;
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

impl std::error::Error for LaunchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            LaunchReason::Spawn { source, .. } => Some(source),
            LaunchReason::Setup(e) => Some(e.as_ref()),
            LaunchReason::Qmp(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Shutdown did not go as asked.
#[derive(Debug)]
pub struct AbnormalShutdown {
    /// Which rung failed (e.g. no exit within 5s after `quit`).
    pub cause: ShutdownCause,
    /// How QEMU ended in the end.
    pub status: Option<ExitStatus>,
    /// The command line.
    pub command: Vec<String>,
    /// QEMU's output (stdout and stderr): its last 64 KiB and 200 lines at most (a first
    /// line then says how much was left out), the command line's secrets replaced by
    /// `<redacted>`. Raw text: the `Display` of this error escapes its control characters.
    pub output: String,
}

impl fmt::Display for AbnormalShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "abnormal shutdown: {}", self.cause)?;
        if let Some(status) = self.status {
            writeln!(f, "  {status}")?;
        }
        writeln!(f, "  command: {}", shell_words(&self.command))?;
        write_output(f, &self.output)
    }
}

impl std::error::Error for AbnormalShutdown {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            ShutdownCause::QuitFailed(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// QEMU went away under us.
#[derive(Debug)]
pub struct QemuExited {
    /// What we were doing.
    pub during: String,
    /// How it ended, if known yet.
    pub status: Option<ExitStatus>,
    /// The command line.
    pub command: Vec<String>,
    /// QEMU's output (stdout and stderr): its last 64 KiB and 200 lines at most (a first
    /// line then says how much was left out), the command line's secrets replaced by
    /// `<redacted>`. Raw text: the `Display` of this error escapes its control characters.
    pub output: String,
}

impl fmt::Display for QemuExited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => writeln!(f, "QEMU exited ({status}) during {}", self.during)?,
            None => writeln!(f, "QEMU closed its monitor during {}", self.during)?,
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
    for line in crate::output::sanitize(output.trim_end()).lines() {
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
/// `data=` of `-object secret,...` (key=value or JSON form), `password=`, `passwd=` and
/// dotted `*.password=` values, and the password of a URL's user info
/// (`http://user:PASS@host`, `iscsi://user%PASS@host`). Option values are split as QEMU
/// splits them: `,,` is a comma inside a value.
///
/// ```
/// let argv: Vec<String> = ["qemu", "-object", "secret,id=s0,data=hun,,ter5", "-vnc", ":0,password=on"]
///     .map(String::from).to_vec();
/// assert_eq!(
///     qemu_machine::redact_argv(&argv).join(" "),
///     "qemu -object secret,id=s0,data=<redacted> -vnc :0,password=on"
/// );
/// ```
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    argv.iter()
        .map(|arg| redact_option(arg, &mut Vec::new()))
        .collect()
}

/// Secrets shorter than this are scrubbed from output only inside a whole echoed argument
/// (replacing every `ab` of a text would garble it).
const MIN_SCRUBBED_SECRET: usize = 4;

/// What to scrub from QEMU's output, which echoes options back (`-object secret,...:
/// Invalid parameter ...`), as `(text, replacement)` in the order to apply: every argument
/// that holds a secret (by its redacted form), then each secret value by itself, `,,`-escaped
/// and as QEMU reads it.
pub(crate) fn secrets_of(argv: &[String]) -> Vec<(String, String)> {
    let mut values = Vec::new();
    let mut pairs = Vec::new();
    for arg in argv {
        let redacted = redact_option(arg, &mut values);
        if redacted != *arg {
            pairs.push((arg.clone(), redacted));
        }
    }
    pairs.sort_by_key(|(arg, _)| std::cmp::Reverse(arg.len()));
    values.retain(|v| v.chars().count() >= MIN_SCRUBBED_SECRET);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    for value in values {
        let escaped = value.replace(',', ",,");
        if escaped != value {
            pairs.push((escaped, qmp::redact::REDACTED.into()));
        }
        pairs.push((value, qmp::redact::REDACTED.into()));
    }
    pairs
}

/// QEMU's option syntax: `,`-separated parts, `,,` a literal comma. Returns the parts raw
/// (escapes kept), so that joining them with `,` gives `arg` back.
fn split_option(arg: &str) -> Vec<&str> {
    let bytes = arg.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                i += 2;
                continue;
            }
            parts.push(&arg[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&arg[start..]);
    parts
}

fn secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(last, "password" | "passwd")
}

/// Redacts one argument, pushing each secret (unescaped) onto `secrets`.
fn redact_option(arg: &str, secrets: &mut Vec<String>) -> String {
    if arg.starts_with('{') {
        if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(arg) {
            collect_json_secrets(&value, secrets);
            if qmp::redact::redact_json(&mut value) {
                return value.to_string();
            }
        }
        return redact_url(arg, secrets);
    }
    if !arg.contains('=') {
        return redact_url(arg, secrets);
    }
    let parts = split_option(arg);
    let secret_object = parts
        .iter()
        .any(|p| p.starts_with("secret") || *p == "qom-type=secret");
    parts
        .iter()
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let flag = matches!(value, "on" | "off" | "true" | "false");
            if (secret_object && key == "data") || (secret_key(key) && !flag && !value.is_empty()) {
                secrets.push(value.replace(",,", ","));
                format!("{key}={}", qmp::redact::REDACTED)
            } else {
                redact_url(part, secrets)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Hides the password in every `scheme://user:PASS@` or `scheme://user%PASS@` of `text`.
fn redact_url(text: &str, secrets: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?' or '#'; user info at its last '@'.
        let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find([':', '%']) {
                    Some(sep) if sep + 1 < userinfo.len() => {
                        secrets.push(userinfo[sep + 1..].replace(",,", ","));
                        out.push_str(&userinfo[..=sep]);
                        out.push_str(qmp::redact::REDACTED);
                        out.push_str(&authority[at..]);
                    }
                    _ => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

fn collect_json_secrets(value: &serde_json::Value, secrets: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            let secret_object = map
                .get("qom-type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|t| t.starts_with("secret"));
            for (key, value) in map {
                match value.as_str() {
                    Some(s) if (secret_object && key == "data") || secret_key(key) => {
                        secrets.push(s.to_string())
                    }
                    _ => collect_json_secrets(value, secrets),
                }
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| collect_json_secrets(v, secrets))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(argv: &[&str]) -> Vec<String> {
        argv.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn redaction_honours_escaped_commas_dots_and_urls() {
        let argv = words(&[
            "qemu",
            "-object",
            "secret,id=s0,data=hun,,ter5,format=raw",
            "-blockdev",
            "driver=rbd,pool=p,image=i,server.0.password=pw1,auth.passwd=pw2",
            "-drive",
            "file=iscsi://user%PASS3@host/iqn/0,if=none",
            "-cdrom",
            "http://user:PASS4@host:80/a.iso",
            "-vnc",
            ":0,password=on",
            "-object",
            r#"{"qom-type":"secret","id":"s1","data":"json5"}"#,
        ]);
        let shown = redact_argv(&argv).join(" ");
        for secret in ["hun", "ter5", "pw1", "pw2", "PASS3", "PASS4", "json5"] {
            assert!(!shown.contains(secret), "{secret}: {shown}");
        }
        assert!(shown.contains("data=<redacted>,format=raw"), "{shown}");
        assert!(
            shown.contains("iscsi://user%<redacted>@host/iqn/0,if=none"),
            "{shown}"
        );
        assert!(
            shown.contains("http://user:<redacted>@host:80/a.iso"),
            "{shown}"
        );
        assert!(shown.contains(":0,password=on"), "{shown}");
        let secrets = secrets_of(&argv);
        let echo = "qemu: -object secret,id=s0,data=hun,,ter5,format=raw: bad; \
                    also hun,ter5 and PASS3, json5, pw1 (short: kept)";
        let scrubbed = crate::output::scrub(echo, &secrets);
        for secret in ["hun", "ter5", "PASS3", "json5"] {
            assert!(!scrubbed.contains(secret), "{secret}: {scrubbed}");
        }
        assert!(
            scrubbed.contains("data=<redacted>,format=raw: bad"),
            "{scrubbed}"
        );
        assert!(scrubbed.contains("pw1 (short: kept)"), "{scrubbed}");
    }
}
