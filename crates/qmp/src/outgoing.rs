//! The write path: a message is written at once on the caller's task if the socket takes
//! all of it; whatever it cannot take right away is queued *whole*, and a flusher task
//! (`flush` in `tasks.rs`) finishes it. A caller that gives up (deadline,
//! cancellation) therefore never leaves half a message on the wire, and messages go out in
//! the order they were submitted.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use crate::error::DisconnectReason;
use crate::transport::Stream;

/// Default limit on the bytes queued because the peer is not reading: 16 MiB.
pub const DEFAULT_MAX_WRITE_BACKLOG: usize = 16 * 1024 * 1024;

/// The messages the socket has not taken yet, oldest first, within a byte limit.
pub(crate) struct WriteQueue {
    inner: Mutex<Backlog>,
    limit: usize,
}

#[derive(Default)]
struct Backlog {
    messages: VecDeque<Outgoing>,
    /// Bytes queued and not yet written.
    queued: usize,
    /// A flusher task is running for this queue (at most one is).
    flusher_running: bool,
}

struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
}

/// What [`WriteQueue::submit`] did.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// Written whole, or queued behind a running flusher.
    Done,
    /// Queued; the caller must spawn the flusher task (`flush` in `tasks.rs`).
    StartFlusher,
}

/// Why [`WriteQueue::submit`] did not take a message.
pub(crate) enum Refused {
    /// The session is over.
    Closed(DisconnectReason),
    /// Writing failed; the session must end.
    Io(io::Error),
    /// The peer is not reading: this many bytes are queued already, and the message would
    /// pass the limit. The session goes on.
    Backpressure(usize),
}

impl WriteQueue {
    /// A queue holding at most `limit` unwritten bytes (a first message is always taken).
    pub(crate) fn new(limit: usize) -> WriteQueue {
        WriteQueue {
            inner: Mutex::new(Backlog::default()),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Backlog> {
        crate::sync::lock_unpoisoned(&self.inner)
    }

    /// Writes now if nothing is queued and the socket takes it; queues the rest whole.
    /// `closed` is asked under the queue's lock first, so nothing is queued after the
    /// session's end has cleared the queue.
    pub(crate) fn submit(
        &self,
        stream: &Stream,
        bytes: Vec<u8>,
        fds: Vec<OwnedFd>,
        closed: impl FnOnce() -> Option<DisconnectReason>,
    ) -> Result<Submitted, Refused> {
        let mut backlog = self.lock();
        if let Some(reason) = closed() {
            return Err(Refused::Closed(reason));
        }
        if !backlog.messages.is_empty() && backlog.queued.saturating_add(bytes.len()) > self.limit {
            return Err(Refused::Backpressure(backlog.queued));
        }
        let mut outgoing = Outgoing {
            bytes,
            sent: 0,
            fds,
        };
        if backlog.messages.is_empty() {
            match write_some(stream, &mut outgoing) {
                Ok(true) => return Ok(Submitted::Done),
                Ok(false) => {}
                Err(e) => return Err(Refused::Io(e)),
            }
        }
        backlog.queued += outgoing.bytes.len() - outgoing.sent;
        backlog.messages.push_back(outgoing);
        if backlog.flusher_running {
            Ok(Submitted::Done)
        } else {
            backlog.flusher_running = true;
            Ok(Submitted::StartFlusher)
        }
    }

    /// Writes queued messages while the socket takes them. `Ok(true)` when the queue is
    /// empty (the flusher is done and marked as stopped), `Ok(false)` when the socket is
    /// full again. On an error the flusher is marked as stopped too.
    pub(crate) fn flush_ready(&self, stream: &Stream) -> io::Result<bool> {
        let mut backlog = self.lock();
        let backlog = &mut *backlog;
        while let Some(front) = backlog.messages.front_mut() {
            let before = front.sent;
            let result = write_some(stream, front);
            backlog.queued -= front.sent - before;
            match result {
                Ok(true) => {
                    backlog.messages.pop_front();
                }
                Ok(false) => return Ok(false),
                Err(e) => {
                    backlog.flusher_running = false;
                    return Err(e);
                }
            }
        }
        backlog.flusher_running = false;
        Ok(true)
    }

    /// Drops everything queued (the session is over).
    pub(crate) fn clear(&self) {
        let mut backlog = self.lock();
        backlog.messages.clear();
        backlog.queued = 0;
    }
}

/// Writes as much of `outgoing` as the socket takes now; true when all of it went.
fn write_some(stream: &Stream, outgoing: &mut Outgoing) -> io::Result<bool> {
    while outgoing.sent < outgoing.bytes.len() {
        match stream.try_write(&outgoing.bytes[outgoing.sent..], &outgoing.fds) {
            Ok(n) => {
                outgoing.sent += n;
                outgoing.fds.clear();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
