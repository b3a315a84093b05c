//! Making a connection: [`ClientBuilder`]'s settings, connecting or adopting a socket, and
//! the handshake (wait for the greeting, negotiate capabilities) that turns it into a
//! running [`Client`].
//!
//! Set-up is the only code that waits on the session state for something other than its
//! end: it starts the reader, then waits for the state to leave `AwaitingGreeting`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::address::Address;
use crate::client::{Client, Request};
use crate::connection::{Connection, Settings};
use crate::error::{DisconnectReason, Error, ProtocolError, Result};
use crate::events::{EventFilter, DEFAULT_QUEUE_CAPACITY};
use crate::framing::DEFAULT_MAX_MESSAGE_SIZE;
use crate::outgoing::DEFAULT_MAX_WRITE_BACKLOG;
use crate::session::SessionState;
use crate::tasks::read_loop;
use crate::transcript::Transcript;
use crate::transport::Stream;

/// Default deadline for connecting.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for the greeting and for capabilities negotiation.
pub const DEFAULT_GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for a command's reply.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings for a connection; finish with one of the `connect`/`adopt` methods.
///
/// ```no_run
/// # async fn demo() -> qmp::Result<()> {
/// use std::time::Duration;
///
/// let client = qmp::Client::builder()
///     .command_timeout(Duration::from_secs(5))
///     .connect(&"/run/vm/qmp.sock".parse().unwrap())
///     .await?;
/// let status = client.execute("query-status", serde_json::json!({})).await?;
/// println!("{status}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    name: String,
    connect_timeout: Duration,
    greeting_timeout: Duration,
    command_timeout: Duration,
    await_greeting: bool,
    negotiate: bool,
    send_ids: bool,
    max_message_size: usize,
    event_queue_capacity: usize,
    max_write_backlog: usize,
    transcript: Option<PathBuf>,
    initial_subscription: Option<EventFilter>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            name: "qmp".into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            greeting_timeout: DEFAULT_GREETING_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            await_greeting: true,
            negotiate: true,
            send_ids: true,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            event_queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_write_backlog: DEFAULT_MAX_WRITE_BACKLOG,
            transcript: None,
            initial_subscription: None,
        }
    }
}

impl ClientBuilder {
    /// A name for log records (e.g. the VM's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Deadline for the connection itself.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for the greeting, and again for `qmp_capabilities`.
    pub fn greeting_timeout(mut self, timeout: Duration) -> Self {
        self.greeting_timeout = timeout;
        self
    }

    /// Default deadline for every command (a [`Request`] can set its own).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Whether to wait for `{"QMP": ...}` first (on by default; off for the guest agent).
    pub fn await_greeting(mut self, on: bool) -> Self {
        self.await_greeting = on;
        self
    }

    /// Whether to send `qmp_capabilities` (on by default; off for the guest agent).
    /// Negotiation enables `oob` whenever the greeting offers it.
    pub fn negotiate(mut self, on: bool) -> Self {
        self.negotiate = on;
        self
    }

    /// Whether commands carry an `id` (on by default). Off, replies are matched to commands
    /// in order, as old guest agents need.
    pub fn send_ids(mut self, on: bool) -> Self {
        self.send_ids = on;
        self
    }

    /// Largest message accepted from the peer (default 10 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Capacity of each subscriber's queue (default 4096 events).
    pub fn event_queue_capacity(mut self, events: usize) -> Self {
        self.event_queue_capacity = events;
        self
    }

    /// Most bytes queued for a peer that is not reading (default 16 MiB); past it,
    /// commands fail with [`Error::Backpressure`] and the session goes on.
    pub fn max_write_backlog(mut self, bytes: usize) -> Self {
        self.max_write_backlog = bytes;
        self
    }

    /// Appends every message in and out to this file (created 0600).
    pub fn transcript(mut self, path: impl Into<PathBuf>) -> Self {
        self.transcript = Some(path.into());
        self
    }

    /// Subscribes before the first byte is read, so not even an event that arrives in the
    /// same read as the negotiation reply is missed; collect it with
    /// [`Client::take_initial_subscription`].
    pub fn subscribe_from_start(mut self, filter: EventFilter) -> Self {
        self.initial_subscription = Some(filter);
        self
    }

    /// Connects to a UNIX path or a TCP address, then awaits the greeting and negotiates
    /// capabilities as configured.
    ///
    /// # Errors
    ///
    /// - [`Error::Connect`] when the connection cannot be made, or is not made within
    ///   [`connect_timeout`](Self::connect_timeout) (its source then has kind `TimedOut`);
    /// - [`Error::Io`] when the [`transcript`](Self::transcript) file cannot be opened;
    /// - [`Error::Timeout`] when the greeting, or the reply to `qmp_capabilities`, does not come
    ///   within [`greeting_timeout`](Self::greeting_timeout) (its `seen` says what did come);
    /// - [`Error::Greeting`] when the peer's first message (events aside) is not a greeting;
    /// - [`Error::Negotiation`] when QEMU refuses `qmp_capabilities`;
    /// - [`Error::Disconnected`] when the peer closes the connection, the socket fails, or the peer
    ///   sends something that is not QMP during the handshake.
    ///
    /// After a handshake error the connection is closed.
    pub async fn connect(self, address: &Address) -> Result<Client> {
        let connect_error = |source| Error::Connect {
            address: address.to_string(),
            source,
        };
        let attempt = async {
            match address {
                Address::Unix(path) => tokio::net::UnixStream::connect(path)
                    .await
                    .map(Stream::Unix),
                Address::Tcp(host, port) => tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map(Stream::tcp),
            }
        };
        let stream = crate::deadline::Deadline::after(self.connect_timeout)
            .timeout(attempt)
            .await
            .map_err(|_| {
                connect_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ))
            })?
            .map_err(connect_error)?;
        self.start(stream, address.to_string()).await
    }

    /// Connects to a UNIX socket path.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_unix(self, path: impl AsRef<Path>) -> Result<Client> {
        self.connect(&Address::Unix(path.as_ref().into())).await
    }

    /// Takes over an already-connected UNIX stream, e.g. our end of a socketpair.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use qmp::fake::FakePeer;
    ///
    /// let (ours, mut fake) = FakePeer::pair()?;
    /// let peer = tokio::spawn(async move { fake.handshake().await });
    /// let client = qmp::Client::builder().adopt_unix(ours).await?;
    /// assert_eq!(client.greeting().unwrap().version.qemu.major, 7);
    /// peer.await??;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::Connect`] when the stream cannot be made non-blocking or registered
    ///   with the runtime;
    /// - [`Error::Io`] when the [`transcript`](Self::transcript) file cannot be opened;
    /// - [`Error::Timeout`] when the greeting, or the reply to `qmp_capabilities`, does not come
    ///   within [`greeting_timeout`](Self::greeting_timeout) (its `seen` says what did come);
    /// - [`Error::Greeting`] when the peer's first message (events aside) is not a greeting;
    /// - [`Error::Negotiation`] when QEMU refuses `qmp_capabilities`;
    /// - [`Error::Disconnected`] when the peer closes the connection, the socket fails, or the peer
    ///   sends something that is not QMP during the handshake.
    ///
    /// After a handshake error the connection is closed.
    pub async fn adopt_unix(self, stream: std::os::unix::net::UnixStream) -> Result<Client> {
        let wrap = |source| Error::Connect {
            address: "an adopted UNIX stream".into(),
            source,
        };
        stream.set_nonblocking(true).map_err(wrap)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(wrap)?;
        self.start(Stream::Unix(stream), "socketpair".into()).await
    }

    /// Takes over a raw file descriptor of a connected UNIX stream socket.
    ///
    /// # Errors
    ///
    /// As [`adopt_unix`](Self::adopt_unix).
    pub async fn adopt_fd(self, fd: OwnedFd) -> Result<Client> {
        self.adopt_unix(std::os::unix::net::UnixStream::from(fd))
            .await
    }

    pub(crate) async fn adopt_tcp(
        self,
        stream: tokio::net::TcpStream,
        peer: String,
    ) -> Result<Client> {
        self.start(Stream::tcp(stream), peer).await
    }

    pub(crate) async fn adopt_tokio_unix(
        self,
        stream: tokio::net::UnixStream,
        peer: String,
    ) -> Result<Client> {
        self.start(Stream::Unix(stream), peer).await
    }

    async fn start(self, stream: Stream, peer: String) -> Result<Client> {
        let transcript = match &self.transcript {
            Some(path) => Some(Transcript::open(path)?),
            None => None,
        };
        let greets = self.await_greeting || self.negotiate;
        let connection = Connection::new(Settings {
            name: self.name.clone(),
            peer,
            stream,
            command_timeout: self.command_timeout,
            send_ids: self.send_ids,
            negotiate: self.negotiate,
            // A peer that greets is QEMU's monitor; one that does not, the guest agent.
            id_less_errors_fail_oldest: greets,
            event_queue_capacity: self.event_queue_capacity,
            max_write_backlog: self.max_write_backlog,
            transcript,
            initial: if greets {
                SessionState::AwaitingGreeting
            } else {
                SessionState::Running
            },
        });
        let mut session = connection.session();
        if let Some(filter) = self.initial_subscription.clone() {
            connection.set_initial_subscription(connection.subscribe(filter));
        }
        let reader = tokio::spawn(read_loop(
            Arc::downgrade(&connection),
            connection.stream.clone(),
            self.max_message_size,
        ));
        connection.set_reader(reader);
        let client = Client::from_connection(connection);
        if greets {
            self.await_greeting_of(&client, &mut session).await?;
        }
        if self.negotiate {
            self.negotiate_capabilities(&client).await?;
        }
        Ok(client)
    }

    /// Waits until the reader has seen the greeting (the session leaves
    /// `AwaitingGreeting`), or the session ends, or the greeting deadline passes.
    async fn await_greeting_of(
        &self,
        client: &Client,
        session: &mut watch::Receiver<SessionState>,
    ) -> Result<()> {
        let connection = client.connection();
        let waited = crate::deadline::Deadline::after(self.greeting_timeout)
            .timeout(session.wait_for(|state| !matches!(state, SessionState::AwaitingGreeting)))
            .await;
        let reason = match waited {
            Ok(Ok(state)) => state.closed_reason().cloned(),
            // The sender lives in the connection, which `client` holds.
            Ok(Err(_)) => Some(connection.disconnect_reason()),
            Err(_) => {
                let seen = connection.seen();
                client.close();
                return Err(Error::Timeout {
                    awaited: format!("the QMP greeting from {}", connection.peer),
                    after: self.greeting_timeout,
                    seen,
                });
            }
        };
        match reason {
            None => Ok(()),
            Some(DisconnectReason::Protocol(e @ ProtocolError::NotAGreeting { .. })) => {
                Err(Error::Greeting(e.to_string()))
            }
            Some(reason) => Err(Error::Disconnected(reason)),
        }
    }

    /// Sends `qmp_capabilities` (enabling `oob` if offered): `Negotiating -> Running`.
    async fn negotiate_capabilities(&self, client: &Client) -> Result<()> {
        let offers_oob = client
            .greeting()
            .is_some_and(|g| g.capabilities.iter().any(|c| c == "oob"));
        let arguments = if offers_oob {
            serde_json::json!({"enable": ["oob"]})
        } else {
            Value::Null
        };
        let request = Request::new("qmp_capabilities")
            .arguments(arguments)
            .timeout(self.greeting_timeout);
        match client.execute_request(request).await {
            Ok(_) => {
                client.connection().negotiated();
                Ok(())
            }
            Err(Error::Command(e)) => {
                client.close();
                Err(Error::Negotiation(format!("{}: {}", e.class, e.desc)))
            }
            Err(e) => {
                client.close();
                Err(e)
            }
        }
    }
}

impl Client {
    /// Starts configuring a connection.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}
