//! A record of every message in and out: `tracing` debug records always, and a file on
//! request.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Which way a message went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    Out,
    In,
}

impl Direction {
    fn arrow(self) -> &'static str {
        match self {
            Direction::Out => "-->",
            Direction::In => "<--",
        }
    }
}

/// Writes one line per message: `<unix seconds.micros> --> {...}`.
#[derive(Debug)]
pub(crate) struct Transcript {
    file: Mutex<File>,
}

impl Transcript {
    /// Opens (appending; created 0600; never through a symlink; a FIFO or device is an
    /// error at once) a transcript file.
    pub(crate) fn open(path: &Path) -> Result<Transcript, Error> {
        let file = crate::fsutil::open_private_append(path)
            .map_err(|e| Error::io(format!("opening QMP transcript {}", path.display()), e))?;
        Ok(Transcript {
            file: Mutex::new(file),
        })
    }

    fn write(&self, direction: Direction, message: &[u8]) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = format!(
            "{}.{:06} {} ",
            now.as_secs(),
            now.subsec_micros(),
            direction.arrow()
        )
        .into_bytes();
        line.extend_from_slice(message.trim_ascii_end());
        line.push(b'\n');
        let mut file = crate::sync::lock_unpoisoned(&self.file);
        if let Err(e) = file.write_all(&line) {
            tracing::warn!("cannot write the QMP transcript: {e}");
        }
    }
}

/// Logs a message at debug level and, when there is one, to the transcript file, with
/// secrets redacted (see [`crate::redact`]).
pub(crate) fn record(
    transcript: Option<&Transcript>,
    name: &str,
    direction: Direction,
    message: &[u8],
) {
    let logging = tracing::enabled!(target: "qmp::wire", tracing::Level::DEBUG);
    if !logging && transcript.is_none() {
        return;
    }
    let message = crate::redact::redact_message(message);
    let message = message.as_ref();
    if logging {
        tracing::debug!(
            target: "qmp::wire",
            peer = name,
            "{} {}",
            direction.arrow(),
            String::from_utf8_lossy(message.trim_ascii_end())
        );
    }
    if let Some(transcript) = transcript {
        transcript.write(direction, message);
    }
}
