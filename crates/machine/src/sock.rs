//! Socket plumbing shared by the console, qtest and guest-agent sessions: our end of a
//! socketpair made usable by tokio, split into a reader (for the task that drains it) and a
//! writer, and writes bounded by a deadline.

use std::io;

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Our end of a socketpair, made usable by tokio and split (must run inside a runtime).
pub(crate) fn split(
    stream: std::os::unix::net::UnixStream,
    what: &str,
) -> Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let setup = |e| Error::io(format!("setting up the {what} socket"), e);
    stream.set_nonblocking(true).map_err(setup)?;
    Ok(UnixStream::from_std(stream).map_err(setup)?.into_split())
}

/// Why [`write_all_before`] stopped.
#[derive(Debug)]
pub(crate) enum WriteFailed {
    /// The deadline passed with only `written` bytes taken.
    Deadline {
        /// How many bytes the socket took.
        written: usize,
    },
    /// The socket failed.
    Io(io::Error),
}

/// Writes all of `bytes`, or fails once `deadline` passes.
pub(crate) async fn write_all_before(
    writer: &OwnedWriteHalf,
    bytes: &[u8],
    deadline: Instant,
) -> std::result::Result<(), WriteFailed> {
    let mut written = 0;
    while written < bytes.len() {
        match writer.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout_at(deadline, writer.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(WriteFailed::Io(e)),
                    Err(_) => return Err(WriteFailed::Deadline { written }),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WriteFailed::Io(e)),
        }
    }
    Ok(())
}
