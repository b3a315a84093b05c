//! How a command fails: the one type every subcommand returns its error as, and how it is
//! shown (one line on stderr, any detail indented below it) with its exit status.

use std::io::Write;
use std::process::ExitCode;

/// A failure to report: one line on stderr and an exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What went wrong: a one-line summary, then any detail on further lines.
    message: String,
    /// The exit status of the command.
    status: u8,
}

impl Failure {
    /// A failure with exit status 1.
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure::with_status(message, 1)
    }

    /// A failure with another exit status (2 for usage errors, as clap uses).
    pub(crate) fn with_status(message: impl Into<String>, status: u8) -> Failure {
        Failure {
            message: message.into(),
            status,
        }
    }

    /// A QMP error as `Class: desc` (see [`qmp_error_text`]), exit status 1.
    pub(crate) fn command(error: qmp::Error) -> Failure {
        Failure::new(qmp_error_text(&error))
    }

    /// The exit status it ends the command with.
    #[cfg(test)]
    pub(crate) fn status(&self) -> u8 {
        self.status
    }

    /// The message, for a failure that is shown without ending the command.
    pub(crate) fn message_text(&self) -> &str {
        &self.message
    }

    /// Prints the failure on stderr: `qemu-machine: ` and its first line, then the rest
    /// (command lines, output) indented, with control characters from QEMU or a peer
    /// rendered harmless; returns its exit status. A stderr that is gone is ignored.
    ///
    /// With `run --json` it is one JSON object instead: `{"status": "error", "message": ...}`.
    pub(crate) fn report(&self) -> ExitCode {
        if crate::term::json() {
            let line = serde_json::json!({"status": "error", "message": self.message});
            let _ = writeln!(std::io::stderr().lock(), "{line}");
            return ExitCode::from(self.status);
        }
        let message = crate::term::sanitize(&self.message);
        let mut lines = message.lines();
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "qemu-machine: {}", lines.next().unwrap_or("failed"));
        for line in lines {
            let _ = writeln!(stderr, "  {}", line.trim_start());
        }
        ExitCode::from(self.status)
    }
}

/// Most errors read well as their first line; the rest (command lines, output) follows.
impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::new(error.to_string())
    }
}

/// What a subcommand returns: its exit status, or a failure to report.
pub(crate) type Outcome = Result<u8, Failure>;

/// A QMP error the way QMP users read it: `Class: desc` for a command error.
pub(crate) fn qmp_error_text(error: &qmp::Error) -> String {
    match error {
        qmp::Error::Command(e) => format!("{}: {}", e.class, e.desc),
        other => other.to_string(),
    }
}

/// An exit status for a process that ended with `code`, or by `signal` (128 + signal, as
/// shells report it).
pub(crate) fn exit_status_code(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::exit_status_code;

    #[test]
    fn exit_statuses_are_as_shells_report_them() {
        assert_eq!(exit_status_code(Some(0), None), 0);
        assert_eq!(exit_status_code(Some(33), None), 33);
        assert_eq!(exit_status_code(Some(300), None), 255);
        assert_eq!(exit_status_code(None, Some(9)), 137);
        assert_eq!(exit_status_code(None, None), 1);
    }
}
