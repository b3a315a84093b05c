//! The asynchronous QMP client: [`Client`], the handle callers use, and [`Request`], a
//! command with its options.
//!
//! This is the caller-side half: a call encodes its command (`wire.rs`), registers for the
//! reply and writes on the caller's own task (`connection.rs`, `outgoing.rs`), then awaits
//! the reply under its deadline. The background half (the reader that routes replies by id
//! and copies events to subscribers, the flusher) is in `tasks.rs`; set-up (connecting,
//! greeting, negotiation) in `builder.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::command::Command;
use crate::connection::{Connection, PendingCommand};
use crate::deadline::Deadline;
use crate::error::{CommandError, DisconnectReason, Error, Result};
use crate::events::{EventFilter, Subscription};
use crate::message::{Event, Greeting, Response};
use crate::outgoing::Submitted;
use crate::session::SessionState;
use crate::transcript::{record, Direction};
use crate::wire::{command_arguments, encode_command};

/// A command to send, with its options.
///
/// ```
/// use std::time::Duration;
/// use qmp::Request;
///
/// let request = Request::new("device_del")
///     .arguments(serde_json::json!({"id": "disk1"}))
///     .timeout(Duration::from_secs(5));
/// assert_eq!(request.name(), "device_del");
/// ```
pub struct Request {
    name: String,
    arguments: Value,
    timeout: Option<Duration>,
    oob: bool,
    fds: Vec<OwnedFd>,
}

/// Secrets in the arguments are shown redacted (see [`crate::redact`]).
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut arguments = self.arguments.clone();
        crate::redact::redact_json(&mut arguments);
        f.debug_struct("Request")
            .field("name", &self.name)
            .field("arguments", &arguments)
            .field("timeout", &self.timeout)
            .field("oob", &self.oob)
            .field("fds", &self.fds)
            .finish()
    }
}

impl Request {
    /// A command with no arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Request {
            name: name.into(),
            arguments: Value::Null,
            timeout: None,
            oob: false,
            fds: Vec::new(),
        }
    }

    /// The command's arguments: a JSON object, or `Null` for none.
    pub fn arguments(mut self, arguments: Value) -> Self {
        self.arguments = arguments;
        self
    }

    /// A deadline for this command alone.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends as `exec-oob` (out of band); needs the `oob` capability, which negotiation
    /// enables whenever QEMU offers it.
    pub fn oob(mut self) -> Self {
        self.oob = true;
        self
    }

    /// Sends a file descriptor along with the command (SCM_RIGHTS; UNIX sockets only), as
    /// `getfd` and `add-fd` expect.
    pub fn fd(mut self, fd: OwnedFd) -> Self {
        self.fds.push(fd);
        self
    }

    /// The command name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A connected QMP session. Cheap to clone; every clone talks over the same connection, and
/// the connection closes when the last clone is dropped or [`close`](Client::close) is called.
///
/// Made by [`Client::builder`] (or [`Listener::accept`](crate::Listener::accept)).
#[derive(Clone)]
pub struct Client {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.connection.name)
            .field("peer", &self.connection.peer)
            .finish()
    }
}

impl Client {
    pub(crate) fn from_connection(connection: Arc<Connection>) -> Client {
        Client { connection }
    }

    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// The peer's greeting, unless greeting was skipped.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.connection.greeting()
    }

    /// The subscription asked for with
    /// [`ClientBuilder::subscribe_from_start`](crate::ClientBuilder::subscribe_from_start)
    /// (once).
    pub fn take_initial_subscription(&self) -> Option<Subscription> {
        self.connection.take_initial_subscription()
    }

    /// Sends a command and returns its `return` value; a QMP error becomes
    /// [`Error::Command`] with class, description and what was sent.
    ///
    /// ```no_run
    /// # async fn demo(client: qmp::Client) -> qmp::Result<()> {
    /// let status = client.execute("query-status", serde_json::json!({})).await?;
    /// println!("{}", status["status"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::Command`] when QEMU answers with `{"error": ...}`;
    /// - [`Error::Timeout`] when no reply comes within the connection's
    ///   [`command_timeout`](Self::command_timeout) (the late reply is dropped);
    /// - [`Error::Disconnected`] when the session is over before or while waiting (except
    ///   for `quit`, which succeeds when the peer closes the connection instead of
    ///   answering);
    /// - [`Error::BadArguments`] when `arguments` is neither an object nor `Null`;
    /// - [`Error::Decode`] when the reply's `return` value is not JSON this crate can hold.
    pub async fn execute(&self, name: &str, arguments: Value) -> Result<Value> {
        self.execute_request(Request::new(name).arguments(arguments))
            .await
    }

    /// [`execute`](Self::execute) with all of [`Request`]'s options.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), with the request's own deadline if it has one, and
    /// [`Error::FdPassingUnsupported`] when it carries descriptors over TCP.
    pub async fn execute_request(&self, request: Request) -> Result<Value> {
        let name = request.name.clone();
        let (response, arguments) = self.exchange(request).await?;
        match response.result {
            Ok(raw) => serde_json::from_str(raw.get()).map_err(|source| Error::Decode {
                what: format!("the reply to `{name}`"),
                source,
            }),
            Err(info) => Err(Error::Command(CommandError {
                command: name,
                // Errors get logged and printed: no secret in them.
                arguments: {
                    let mut arguments = arguments;
                    crate::redact::redact_json(&mut arguments);
                    arguments
                },
                class: info.class,
                desc: info.desc,
            })),
        }
    }

    /// Sends a command and returns the whole response, whether `return` or `error`.
    ///
    /// # Errors
    ///
    /// As [`execute_request`](Self::execute_request), except that a QMP error reply is
    /// returned as a [`Response`], not as [`Error::Command`], and the reply is not decoded
    /// (so no [`Error::Decode`]).
    pub async fn send(&self, request: Request) -> Result<Response> {
        Ok(self.exchange(request).await?.0)
    }

    /// Sends a typed command and decodes its typed reply.
    ///
    /// ```no_run
    /// # async fn demo(client: qmp::Client) -> qmp::Result<()> {
    /// use qmp::commands::QueryStatus;
    ///
    /// let status = client.call(&QueryStatus {}).await?;
    /// println!("running: {}", status.running);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute); [`Error::Decode`] also when the command's arguments
    /// cannot be serialised or the reply does not fit `C::Returns`, and
    /// [`Error::BadArguments`] when the arguments serialise to something not an object.
    pub async fn call<C: Command>(&self, command: &C) -> Result<C::Returns> {
        let arguments = command_arguments(command)?;
        let value = self
            .execute_request(Request::new(C::NAME).arguments(arguments))
            .await?;
        serde_json::from_value(value).map_err(|source| Error::Decode {
            what: format!("the reply to `{}`", C::NAME),
            source,
        })
    }

    /// Subscribes to events. Only events that arrive after this call are delivered. On a
    /// session that is over, the subscription ends at once with [`Error::Disconnected`].
    pub fn subscribe(&self, filter: EventFilter) -> Subscription {
        self.connection.subscribe(filter)
    }

    /// Subscribes, sends the command, then awaits the first matching event, all under one
    /// deadline. Subscribing first means the event cannot slip past.
    ///
    /// ```no_run
    /// # async fn demo(client: qmp::Client) -> qmp::Result<()> {
    /// use std::time::Duration;
    /// use qmp::{EventFilter, Request};
    ///
    /// let (_, event) = client
    ///     .execute_and_wait(
    ///         Request::new("device_del").arguments(serde_json::json!({"id": "disk1"})),
    ///         EventFilter::name("DEVICE_DELETED").and(|e| e.data()["device"] == "disk1"),
    ///         Duration::from_secs(10),
    ///     )
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - everything [`execute_request`](Self::execute_request) returns, for the command;
    /// - [`Error::Timeout`] (with `after` = `timeout`) when the reply and the event together
    ///   take longer than `timeout`;
    /// - [`Error::EventsLost`] when the subscription's queue overflowed before a matching
    ///   event was taken;
    /// - [`Error::Disconnected`] when the session ends before the event arrives.
    pub async fn execute_and_wait(
        &self,
        request: Request,
        filter: EventFilter,
        timeout: Duration,
    ) -> Result<(Value, Event)> {
        let deadline = Deadline::after(timeout);
        let mut subscription = self.subscribe(filter);
        let value = self.execute_request(request.timeout(timeout)).await?;
        let left = deadline.remaining_or_max();
        let event = subscription.recv_timeout(left).await.map_err(|e| match e {
            Error::Timeout { awaited, seen, .. } => Error::Timeout {
                awaited,
                after: timeout,
                seen,
            },
            other => other,
        })?;
        Ok((value, event))
    }

    /// Sends one file descriptor by itself (with a single space byte, which QMP ignores),
    /// for a following `getfd` or `add-fd`, like Python's `send_fd_scm`.
    ///
    /// # Errors
    ///
    /// - [`Error::Io`] when the descriptor cannot be duplicated;
    /// - [`Error::FdPassingUnsupported`] on a TCP connection;
    /// - [`Error::Disconnected`] when the session is over, or writing fails (which ends it).
    pub fn send_fd(&self, fd: impl AsFd) -> Result<()> {
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating the descriptor to send", e))?;
        if !self.connection.stream.is_unix() {
            return Err(Error::FdPassingUnsupported);
        }
        self.submit(b" ".to_vec(), vec![fd])
    }

    /// Writes bytes that are not a command, e.g. the guest agent's `0xFF` resync marker.
    /// They go out whole, in order with commands.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] when the session is over, or writing fails (which ends it).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        record(
            self.connection.transcript.as_ref(),
            &self.connection.name,
            Direction::Out,
            bytes,
        );
        self.submit(bytes.to_vec(), Vec::new())
    }

    /// Ends the session: pending commands fail and subscribers end with
    /// [`DisconnectReason::Closed`]. Idempotent.
    pub fn close(&self) {
        self.connection.disconnect(DisconnectReason::Closed);
    }

    /// True until the session ends.
    pub fn is_connected(&self) -> bool {
        !self.connection.is_closed()
    }

    /// Resolves when the session has ended, with the reason.
    pub async fn closed(&self) -> DisconnectReason {
        let mut session = self.connection.session();
        let reason = session
            .wait_for(SessionState::is_closed)
            .await
            .ok()
            .and_then(|state| state.closed_reason().cloned());
        reason.unwrap_or(DisconnectReason::Closed)
    }

    /// Why the session ended, if it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.connection.closed_reason()
    }

    /// A description of the peer (its address, or `socketpair`).
    pub fn peer(&self) -> &str {
        &self.connection.peer
    }

    /// The default command deadline of this connection.
    pub fn command_timeout(&self) -> Duration {
        self.connection.command_timeout
    }

    /// Every change of the session state (for tasks that live as long as the session).
    pub(crate) fn session_watch(&self) -> watch::Receiver<SessionState> {
        self.connection.session()
    }

    /// Writes (or queues) bytes, starting the flusher task if the queue needs one.
    fn submit(&self, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<()> {
        if self.connection.submit(bytes, fds)? == Submitted::StartFlusher {
            self.connection
                .runtime
                .spawn(crate::tasks::flush(self.connection.clone()));
        }
        Ok(())
    }

    /// Sends `request` and awaits its reply; returns it with the arguments that were sent.
    async fn exchange(&self, request: Request) -> Result<(Response, Value)> {
        let Request {
            name,
            arguments,
            timeout,
            oob,
            fds,
        } = request;
        if !fds.is_empty() && !self.connection.stream.is_unix() {
            return Err(Error::FdPassingUnsupported);
        }
        let timeout = timeout.unwrap_or(self.connection.command_timeout);
        let id = self.connection.next_id();
        let bytes = encode_command(&name, &arguments, id, oob)?;
        let (tx, rx) = oneshot::channel();
        // Forgets the pending entry if we give up, so a late reply is dropped as unknown.
        let forget = self.connection.expect_reply(
            id,
            PendingCommand {
                reply: tx,
                is_quit: name == "quit",
                oob,
            },
        )?;
        record(
            self.connection.transcript.as_ref(),
            &self.connection.name,
            Direction::Out,
            &bytes,
        );
        if let Err(e) = self.submit(bytes, fds) {
            forget.unsent();
            return Err(e);
        }
        match Deadline::after(timeout).timeout(rx).await {
            Ok(Ok(result)) => Ok((result?, arguments)),
            Ok(Err(_)) => Err(Error::Disconnected(self.connection.disconnect_reason())),
            Err(_) => Err(Error::Timeout {
                awaited: match id {
                    Some(id) => format!(
                        "the reply to `{name}` (id {id}) from {}",
                        self.connection.peer
                    ),
                    None => format!("the reply to `{name}` from {}", self.connection.peer),
                },
                after: timeout,
                seen: self.connection.seen(),
            }),
        }
    }
}
