//! The errors of this crate.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Everything that can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection could not be made.
    #[error("cannot connect to QMP at {address}: {source}")]
    Connect {
        /// Where we tried to connect.
        address: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A listening socket could not be made (bind, permissions, put in place).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// Where we tried to listen.
        address: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// QEMU is not reading its monitor: the bytes not yet written passed the write
    /// queue's limit, so the message was refused (the session goes on).
    #[error("QEMU is not reading its monitor ({queued} bytes queued)")]
    Backpressure {
        /// Bytes queued but not yet written when the message was refused.
        queued: usize,
    },
    /// A deadline passed.
    #[error("timed out after {after:?} waiting for {awaited}; {seen}")]
    Timeout {
        /// What we were waiting for.
        awaited: String,
        /// How long we waited.
        after: Duration,
        /// What we saw meanwhile, for diagnosis.
        seen: String,
    },
    /// QEMU answered the command with an error.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The connection is gone; pending and later calls fail with this.
    #[error("QMP connection closed: {0}")]
    Disconnected(DisconnectReason),
    /// A subscriber's queue overflowed and the oldest events were dropped.
    #[error("{0} events were dropped because the subscriber's queue was full")]
    EventsLost(u64),
    /// The peer's first message (events aside, which some peers send early) was not the QMP
    /// greeting; the connection is closed.
    #[error("bad QMP greeting: {0}")]
    Greeting(String),
    /// `qmp_capabilities` failed.
    #[error("QMP capabilities negotiation failed: {0}")]
    Negotiation(String),
    /// A reply or event could not be turned into the requested type.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// Command arguments could not be serialised to a JSON object.
    #[error("arguments of `{command}` must serialise to a JSON object, not {found}")]
    BadArguments {
        /// The command.
        command: String,
        /// What they serialised to.
        found: String,
    },
    /// File descriptors can only travel over UNIX sockets.
    #[error("passing file descriptors needs a UNIX socket connection")]
    FdPassingUnsupported,
    /// A blocking-facade call was made from inside an async runtime.
    #[error(
        "a blocking QMP call was made from inside an async runtime; use the async client there"
    )]
    InsideAsyncRuntime,
    /// A local I/O error outside a session (binding, file transcript, fd passing set-up).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The QMP error class, if this is a command error (`"CommandNotFound"`, ...).
    pub fn class(&self) -> Option<&str> {
        match self {
            Error::Command(e) => Some(&e.class),
            _ => None,
        }
    }

    /// True if the connection is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected(_))
    }

    /// True if a deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

/// QEMU's answer `{"error": {"class": ..., "desc": ...}}` to a command, with the command.
#[derive(Debug, Clone, thiserror::Error)]
#[error("QMP command `{command}` failed: {class}: {desc}")]
pub struct CommandError {
    /// The command name that was sent.
    pub command: String,
    /// The arguments that were sent, with secrets redacted (see [`crate::redact`]).
    pub arguments: Value,
    /// QMP's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`.
    pub class: String,
    /// QMP's human-readable description.
    pub desc: String,
}

/// Why a QMP session ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed the connection.
    Eof,
    /// Reading or writing failed.
    Io(Arc<io::Error>),
    /// The peer sent something that is not QMP.
    Protocol(ProtocolError),
    /// We closed the connection.
    Closed,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Eof => f.write_str("the peer closed the connection"),
            DisconnectReason::Io(e) => write!(f, "I/O error: {e}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DisconnectReason::Closed => f.write_str("closed by this side"),
        }
    }
}

/// The peer broke the protocol; the session ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A byte outside any JSON object that is not white space.
    #[error("data that is not a JSON object: {near:?}")]
    Garbage {
        /// The text around the offending byte.
        near: String,
    },
    /// A message grew past the size limit.
    #[error("a message exceeded the {limit}-byte limit")]
    MessageTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// Before its greeting the peer sent a reply or an unknown message (events are
    /// tolerated there).
    #[error("expected the QMP greeting first, got {found}")]
    NotAGreeting {
        /// What came instead.
        found: String,
    },
    /// A complete object that is not valid JSON.
    #[error("invalid JSON ({reason}): {near:?}")]
    InvalidJson {
        /// The parser's complaint.
        reason: String,
        /// The start of the message.
        near: String,
    },
}
