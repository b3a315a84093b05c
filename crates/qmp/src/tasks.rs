//! A connection's two background tasks, kept apart from the caller-side code in
//! `client.rs`:
//!
//! - the reader ([`read_loop`]), one per connection, reads all the time and hands every
//!   message to [`Connection::dispatch`], so replies reach their callers and events their
//!   subscribers even while nobody is calling;
//! - the flusher ([`flush`]), started only when the socket could not take a message at once,
//!   writes the queued rest (see `outgoing.rs`) and stops when the queue is empty.
//!
//! Both end the session through [`Connection::disconnect`] when their side of the socket
//! fails.

use std::io;
use std::sync::{Arc, Weak};

use crate::connection::Connection;
use crate::error::DisconnectReason;
use crate::framing::FrameDecoder;
use crate::message::Message;
use crate::seen::LastMessage;
use crate::transcript::{record, Direction};
use crate::transport::Stream;

/// Reads and dispatches until the peer closes, the socket fails, the peer breaks the
/// protocol, or the connection is gone (it holds the connection only weakly).
pub(crate) async fn read_loop(
    connection: Weak<Connection>,
    stream: Arc<Stream>,
    max_message_size: usize,
) {
    let mut decoder = FrameDecoder::new(max_message_size);
    let mut buf = vec![0u8; 64 * 1024];
    let reason = 'session: loop {
        let n = match stream.try_read(&mut buf) {
            Ok(0) => break DisconnectReason::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = stream.readable().await {
                    break DisconnectReason::Io(Arc::new(e));
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break DisconnectReason::Io(Arc::new(e)),
        };
        let Some(connection) = connection.upgrade() else {
            return;
        };
        decoder.extend(&buf[..n]);
        let mut messages = 0;
        let mut last = None;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    record(
                        connection.transcript.as_ref(),
                        &connection.name,
                        Direction::In,
                        frame,
                    );
                    let message = match Message::classify(frame) {
                        Ok(message) => message,
                        Err(e) => break 'session DisconnectReason::Protocol(e),
                    };
                    messages += 1;
                    last = Some(LastMessage::of(&message));
                    if let Err(reason) = connection.dispatch(message) {
                        break 'session reason;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'session DisconnectReason::Protocol(e),
            }
        }
        connection.note_received(n, messages, last);
    };
    if let Some(connection) = connection.upgrade() {
        // Logged once, by the session's transition to closed.
        connection.disconnect(reason);
    }
}

/// Writes the connection's queued messages as the socket becomes writable, until the
/// queue is empty or writing fails.
pub(crate) async fn flush(connection: Arc<Connection>) {
    loop {
        if let Err(e) = connection.stream.writable().await {
            connection.disconnect(DisconnectReason::Io(Arc::new(e)));
            return;
        }
        match connection.writes.flush_ready(&connection.stream) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                connection.disconnect(DisconnectReason::Io(Arc::new(e)));
                return;
            }
        }
    }
}
