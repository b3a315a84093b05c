//! One QMP connection's shared state, and the only code that changes it: the session state,
//! the commands waiting for a reply, the subscribers, the write queue.
//!
//! Every `Client` clone holds it; the reader task holds it weakly (so dropping the last
//! `Client` ends the session) and a running flusher holds it strongly until its queue is
//! written. Caller-side code is in `client.rs`, the background tasks are in `tasks.rs`;
//! both go through the methods here.
//!
//! Lock order: `state`, then the subscriber registry or the write queue. The session state
//! is changed only while `state` is locked, so "check the state, then register" is atomic
//! with respect to the end of the session.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{DisconnectReason, Error, ProtocolError, Result};
use crate::events::{EventFilter, Subscribers, Subscription};
use crate::message::{Greeting, Message, Response};
use crate::outgoing::{Refused, Submitted, WriteQueue};
use crate::seen::{LastMessage, Seen};
use crate::session::SessionState;
use crate::transcript::Transcript;
use crate::transport::Stream;
use crate::wire::empty_return;

/// What a connection is made with (the builder's settings that matter after set-up).
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) peer: String,
    pub(crate) stream: Stream,
    pub(crate) command_timeout: Duration,
    pub(crate) send_ids: bool,
    pub(crate) negotiate: bool,
    /// Whether an error reply without an id fails the oldest waiting command: true for
    /// QEMU's monitor, which answers unparsable input that way, in order; false for the
    /// guest agent, whose resync (`0xFF`) draws such errors for the junk before it, which
    /// belong to no command.
    pub(crate) id_less_errors_fail_oldest: bool,
    pub(crate) event_queue_capacity: usize,
    pub(crate) max_write_backlog: usize,
    pub(crate) transcript: Option<Transcript>,
    pub(crate) initial: SessionState,
}

/// A command waiting for its reply.
pub(crate) struct PendingCommand {
    pub(crate) reply: oneshot::Sender<Result<Response>>,
    /// `quit` succeeds when the peer closes the connection instead of answering.
    pub(crate) is_quit: bool,
    /// Sent out of band: its reply may overtake in-band ones.
    pub(crate) oob: bool,
}

/// What is guarded by `Connection::state`.
#[derive(Default)]
struct State {
    /// Commands sent with an id, by id.
    pending: HashMap<u64, PendingCommand>,
    /// Commands sent without an id, answered in order, with a token each (to withdraw one
    /// that could not be sent).
    unnumbered: VecDeque<(u64, PendingCommand)>,
    seen: Seen,
}

/// The state shared by a connection's handles and its background tasks.
pub(crate) struct Connection {
    pub(crate) name: String,
    pub(crate) peer: String,
    pub(crate) stream: Arc<Stream>,
    pub(crate) runtime: Handle,
    pub(crate) command_timeout: Duration,
    pub(crate) transcript: Option<Transcript>,
    pub(crate) writes: WriteQueue,
    state: Mutex<State>,
    /// The one record of where the session is. Changed only by [`Connection::transition`],
    /// with `state` locked.
    session: watch::Sender<SessionState>,
    next_id: AtomicU64,
    send_ids: bool,
    negotiate: bool,
    id_less_errors_fail_oldest: bool,
    subscribers: Arc<Subscribers>,
    greeting: OnceLock<Greeting>,
    reader: Mutex<Option<JoinHandle<()>>>,
    initial_subscription: Mutex<Option<Subscription>>,
}

impl Connection {
    pub(crate) fn new(settings: Settings) -> Arc<Connection> {
        tracing::debug!(
            target: "qmp::session",
            peer = %settings.peer,
            name = %settings.name,
            "QMP session starts: {}",
            settings.initial
        );
        Arc::new(Connection {
            name: settings.name,
            peer: settings.peer,
            stream: Arc::new(settings.stream),
            runtime: Handle::current(),
            command_timeout: settings.command_timeout,
            transcript: settings.transcript,
            writes: WriteQueue::new(settings.max_write_backlog),
            state: Mutex::new(State::default()),
            session: watch::Sender::new(settings.initial),
            next_id: AtomicU64::new(0),
            send_ids: settings.send_ids,
            negotiate: settings.negotiate,
            id_less_errors_fail_oldest: settings.id_less_errors_fail_oldest,
            subscribers: Subscribers::new(settings.event_queue_capacity),
            greeting: OnceLock::new(),
            reader: Mutex::new(None),
            initial_subscription: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock_unpoisoned(&self.state)
    }

    // ---- The session state --------------------------------------------------------------

    /// Moves the session to `next` if that is legal, publishing and logging it once.
    /// Needs `state` locked (the guard is the proof). Returns whether it moved: a closed
    /// session stays closed with its first reason.
    fn transition(&self, _locked: &mut State, next: SessionState) -> bool {
        let mut from = None;
        self.session.send_if_modified(|current| {
            if !current.may_become(&next) {
                debug_assert!(
                    current.is_closed(),
                    "illegal QMP session transition {current} -> {next}"
                );
                return false;
            }
            from = Some(std::mem::replace(current, next));
            true
        });
        let Some(from) = from else {
            return false;
        };
        let to = self.session.borrow();
        // An end the peer or the socket forced on us is worth a warning; the rest is routine.
        if matches!(
            *to,
            SessionState::Closed(DisconnectReason::Io(_) | DisconnectReason::Protocol(_))
        ) {
            tracing::warn!(
                target: "qmp::session",
                peer = %self.peer,
                name = %self.name,
                "QMP session: {from} -> {}",
                *to
            );
        } else {
            tracing::debug!(
                target: "qmp::session",
                peer = %self.peer,
                name = %self.name,
                "QMP session: {from} -> {}",
                *to
            );
        }
        true
    }

    /// A receiver of every change of the session state.
    pub(crate) fn session(&self) -> watch::Receiver<SessionState> {
        self.session.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.session.borrow().is_closed()
    }

    /// Why the session ended, if it has.
    pub(crate) fn closed_reason(&self) -> Option<DisconnectReason> {
        self.session.borrow().closed_reason().cloned()
    }

    /// The reason the session ended, or `Closed` if it has not (yet).
    pub(crate) fn disconnect_reason(&self) -> DisconnectReason {
        self.closed_reason().unwrap_or(DisconnectReason::Closed)
    }

    /// `qmp_capabilities` succeeded: `Negotiating -> Running` (a no-op once closed).
    pub(crate) fn negotiated(&self) {
        let mut state = self.lock();
        self.transition(&mut state, SessionState::Running);
    }

    /// Ends the session once; later calls keep the first reason. Pending commands fail
    /// (except `quit` on EOF), subscribers end after their queued events, the socket is
    /// shut down and the reader stopped.
    pub(crate) fn disconnect(&self, reason: DisconnectReason) {
        let mut state = self.lock();
        if !self.transition(&mut state, SessionState::Closed(reason.clone())) {
            return;
        }
        let pending = std::mem::take(&mut state.pending);
        let unnumbered = std::mem::take(&mut state.unnumbered);
        // The registry is emptied with `state` still locked, so no subscription made after
        // the end is left open.
        self.subscribers.close_all(&reason);
        drop(state);
        self.stream.shutdown();
        if let Some(reader) = crate::sync::lock_unpoisoned(&self.reader).take() {
            reader.abort();
        }
        self.writes.clear();
        let eof = matches!(reason, DisconnectReason::Eof);
        for command in pending
            .into_values()
            .chain(unnumbered.into_iter().map(|(_, c)| c))
        {
            let result = if command.is_quit && eof {
                // QEMU may close the socket before answering `quit`: that is success.
                Ok(Response {
                    id: None,
                    result: Ok(empty_return()),
                })
            } else {
                Err(Error::Disconnected(reason.clone()))
            };
            let _ = command.reply.send(result);
        }
    }

    /// What was received so far, in words, for deadline errors.
    pub(crate) fn seen(&self) -> String {
        let state = self.lock();
        let session = self.session.borrow();
        state.seen.describe(session.closed_reason())
    }

    /// Counts one read of the reader task.
    pub(crate) fn note_received(&self, bytes: usize, messages: u64, last: Option<LastMessage>) {
        self.lock().seen.add(bytes, messages, last);
    }

    // ---- Commands and their replies -----------------------------------------------------

    /// The id for the next command, if commands carry ids.
    pub(crate) fn next_id(&self) -> Option<u64> {
        self.send_ids
            .then(|| self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a command that waits for its reply; the returned guard forgets it again
    /// if the caller gives up, so a late reply is dropped as unknown.
    pub(crate) fn expect_reply(
        &self,
        id: Option<u64>,
        command: PendingCommand,
    ) -> Result<ForgetOnDrop<'_>> {
        let mut state = self.lock();
        if let SessionState::Closed(reason) = &*self.session.borrow() {
            return Err(Error::Disconnected(reason.clone()));
        }
        let mut token = 0;
        match id {
            Some(id) => {
                state.pending.insert(id, command);
            }
            None => {
                token = self.next_id.fetch_add(1, Ordering::Relaxed);
                state.unnumbered.push_back((token, command));
            }
        }
        Ok(ForgetOnDrop {
            connection: self,
            id,
            token,
        })
    }

    /// Hands bytes to the write queue (see `outgoing.rs`); a write error ends the session.
    pub(crate) fn submit(&self, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<Submitted> {
        match self
            .writes
            .submit(&self.stream, bytes, fds, || self.closed_reason())
        {
            Ok(submitted) => Ok(submitted),
            Err(Refused::Closed(reason)) => Err(Error::Disconnected(reason)),
            Err(Refused::Backpressure(queued)) => Err(Error::Backpressure { queued }),
            Err(Refused::Io(e)) => {
                let reason = DisconnectReason::Io(Arc::new(e));
                self.disconnect(reason.clone());
                Err(Error::Disconnected(reason))
            }
        }
    }

    // ---- Messages from the peer ---------------------------------------------------------

    /// Routes one message from the peer: a reply to its waiting command (by id, or in
    /// order without ids), an event to its subscribers, the greeting to the set-up. An
    /// error means the peer broke the protocol and the session must end.
    pub(crate) fn dispatch(&self, message: Message) -> Result<(), DisconnectReason> {
        match message {
            Message::Event(event) => {
                if event.name() == "COMMAND_DROPPED" {
                    self.command_dropped(&event);
                }
                // Also before the greeting: seen in the wild (govmm#90), so tolerated.
                self.subscribers.deliver(&event);
            }
            Message::Response(response) => {
                let mut state = self.lock();
                let waiter = match &response.id {
                    Some(id) => id.as_u64().and_then(|id| state.pending.remove(&id)),
                    None => match state.unnumbered.pop_front().map(|(_, c)| c) {
                        Some(waiter) => Some(waiter),
                        // QEMU answers input it cannot parse with an error without an id.
                        // In-band replies come in order, so it belongs to the oldest
                        // in-band command still waiting (ids are given in sending order).
                        // A scan, but only on this rare path.
                        None if response.result.is_err() && self.id_less_errors_fail_oldest => {
                            let oldest = state
                                .pending
                                .iter()
                                .filter(|(_, command)| !command.oob)
                                .map(|(id, _)| *id)
                                .min();
                            if let Some(id) = oldest {
                                tracing::warn!(
                                    peer = %self.peer,
                                    "a QMP error without an id fails the oldest waiting command (id {id})"
                                );
                            }
                            oldest.and_then(|id| state.pending.remove(&id))
                        }
                        None => None,
                    },
                };
                drop(state);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.reply.send(Ok(response));
                    }
                    None => self.unclaimed_reply(&response)?,
                }
            }
            Message::Greeting(greeting) => self.greeted(greeting),
            Message::Unknown(value) => {
                self.check_greeted(|| LastMessage::Unknown)?;
                tracing::warn!(peer = %self.peer, "ignoring an unknown QMP message: {value}")
            }
        }
        Ok(())
    }

    /// `COMMAND_DROPPED` (QEMU's out-of-band queue was full): the command with that id
    /// fails with class `CommandDropped`.
    fn command_dropped(&self, event: &crate::message::Event) {
        let data = event.data();
        let Some(id) = data.get("id").and_then(serde_json::Value::as_u64) else {
            return;
        };
        let reason = data
            .get("reason")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown");
        let waiter = self.lock().pending.remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.reply.send(Ok(Response {
                id: Some(id.into()),
                result: Err(crate::message::ErrorInfo {
                    class: "CommandDropped".into(),
                    desc: format!("QEMU dropped the command ({reason})"),
                }),
            }));
        }
    }

    /// A reply nobody waits for: before the greeting a protocol error, later logged and
    /// dropped (a late reply after a deadline, or an unknown id).
    fn unclaimed_reply(&self, response: &Response) -> Result<(), DisconnectReason> {
        self.check_greeted(|| LastMessage::of_response(response))?;
        match &response.result {
            Err(info) if response.id.is_none() => tracing::error!(
                peer = %self.peer,
                "QMP error without an id (QEMU could not parse a command?): {}: {}",
                info.class,
                info.desc
            ),
            _ => tracing::warn!(
                peer = %self.peer,
                id = ?response.id,
                "dropping a QMP reply nobody waits for (late or unknown id)"
            ),
        }
        Ok(())
    }

    /// Fails if the session still awaits its greeting: `found` came first instead.
    fn check_greeted(&self, found: impl FnOnce() -> LastMessage) -> Result<(), DisconnectReason> {
        if matches!(*self.session.borrow(), SessionState::AwaitingGreeting) {
            return Err(DisconnectReason::Protocol(ProtocolError::NotAGreeting {
                found: found().to_string(),
            }));
        }
        Ok(())
    }

    fn greeted(&self, greeting: Greeting) {
        let mut state = self.lock();
        let awaiting = matches!(*self.session.borrow(), SessionState::AwaitingGreeting);
        if !awaiting {
            tracing::warn!(peer = %self.peer, "ignoring a second QMP greeting");
            return;
        }
        let _ = self.greeting.set(greeting);
        let next = if self.negotiate {
            SessionState::Negotiating
        } else {
            SessionState::Running
        };
        self.transition(&mut state, next);
    }

    // ---- Subscriptions, greeting, set-up ------------------------------------------------

    /// Subscribes; a session that is over gives a subscription that ends at once.
    pub(crate) fn subscribe(&self, filter: EventFilter) -> Subscription {
        let _state = self.lock();
        match self.closed_reason() {
            Some(reason) => self.subscribers.ended(filter, reason),
            None => self.subscribers.subscribe(filter),
        }
    }

    pub(crate) fn greeting(&self) -> Option<&Greeting> {
        self.greeting.get()
    }

    pub(crate) fn set_reader(&self, reader: JoinHandle<()>) {
        *crate::sync::lock_unpoisoned(&self.reader) = Some(reader);
    }

    pub(crate) fn set_initial_subscription(&self, subscription: Subscription) {
        *crate::sync::lock_unpoisoned(&self.initial_subscription) = Some(subscription);
    }

    pub(crate) fn take_initial_subscription(&self) -> Option<Subscription> {
        crate::sync::lock_unpoisoned(&self.initial_subscription).take()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.disconnect(DisconnectReason::Closed);
    }
}

/// Forgets a pending command when its caller stops waiting (reply, deadline or
/// cancellation), so a late reply is dropped as unknown.
pub(crate) struct ForgetOnDrop<'a> {
    connection: &'a Connection,
    id: Option<u64>,
    token: u64,
}

impl ForgetOnDrop<'_> {
    /// The command was never written: take it out of line, with or without an id.
    pub(crate) fn unsent(self) {
        if self.id.is_none() {
            let token = self.token;
            self.connection
                .lock()
                .unnumbered
                .retain(|(t, _)| *t != token);
        }
    }
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.connection.lock().pending.remove(&id);
        }
        // Without ids the entry must stay in line: its reply will come and be thrown away.
    }
}
