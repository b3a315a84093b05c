//! A QMP multiplexer: one QMP session (e.g. a VM's only monitor) served to any number of
//! standard QMP clients on a UNIX socket.
//!
//! Each client gets real QMP: a greeting, capabilities negotiation (answered here), its
//! commands forwarded over the one upstream session with replies routed back to it under
//! its own ids, and every event once it has negotiated, as QEMU would do.
//!
//! Bounds: at most [`MultiplexerOptions::max_clients`] clients (more are told why and
//! closed); each client's unread output is held as bytes within
//! [`MultiplexerOptions::outbox_budget`] (a client over it is dropped); each client message
//! is at most [`MultiplexerOptions::max_input_message`] bytes; each client has at most one
//! command upstream at a time (it is not read meanwhile). Each client is served by one task
//! owned by the accept loop, so dropping the [`Multiplexer`] closes every client.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{Client, Request};
use crate::error::{Error, ProtocolError, Result};
use crate::events::EventFilter;
use crate::framing::FrameDecoder;
use crate::message::Response;

/// Default [`MultiplexerOptions::outbox_budget`]: 8 MiB.
pub const DEFAULT_OUTBOX_BUDGET: usize = 8 * 1024 * 1024;
/// Default [`MultiplexerOptions::max_clients`]: 32.
pub const DEFAULT_MAX_CLIENTS: usize = 32;
/// Default [`MultiplexerOptions::max_input_message`]: 1 MiB.
pub const DEFAULT_MAX_INPUT_MESSAGE: usize = 1024 * 1024;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The limits of a [`Multiplexer`].
///
/// ```
/// let options = qmp::MultiplexerOptions::default().outbox_budget(1 << 20).max_clients(4);
/// assert_eq!(options.max_clients_value(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct MultiplexerOptions {
    outbox_budget: usize,
    max_clients: usize,
    max_input_message: usize,
}

impl Default for MultiplexerOptions {
    fn default() -> Self {
        MultiplexerOptions {
            outbox_budget: DEFAULT_OUTBOX_BUDGET,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_input_message: DEFAULT_MAX_INPUT_MESSAGE,
        }
    }
}

impl MultiplexerOptions {
    /// Bytes a client may leave unread (replies and events) before it is dropped.
    pub fn outbox_budget(mut self, bytes: usize) -> Self {
        self.outbox_budget = bytes;
        self
    }

    /// Clients served at once; more are refused with an error line.
    pub fn max_clients(mut self, clients: usize) -> Self {
        self.max_clients = clients;
        self
    }

    /// Largest message accepted from a client; a larger one ends that client.
    pub fn max_input_message(mut self, bytes: usize) -> Self {
        self.max_input_message = bytes;
        self
    }

    /// The configured client limit.
    pub fn max_clients_value(&self) -> usize {
        self.max_clients
    }
}

/// A running multiplexer; dropping it stops serving, closes every client's connection and
/// removes the socket file.
#[derive(Debug)]
pub struct Multiplexer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Multiplexer {
    /// Listens on `path` (created with mode 0600, must not exist) and serves `upstream`
    /// to every client that connects. Call inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(upstream: qmp::Client) -> qmp::Result<()> {
    /// let mux = qmp::Multiplexer::serve(upstream, "/run/vm/qmp-shared.sock")?;
    /// // Any standard QMP client (e.g. `qmp-shell`) may now connect to mux.path().
    /// # drop(mux); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] (with the path as `address`) when the socket cannot be made,
    /// e.g. because `path` exists.
    pub fn serve(upstream: Client, path: impl AsRef<Path>) -> Result<Multiplexer> {
        Multiplexer::serve_with(upstream, path, MultiplexerOptions::default())
    }

    /// [`serve`](Self::serve) with other limits.
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub fn serve_with(
        upstream: Client,
        path: impl AsRef<Path>,
        options: MultiplexerOptions,
    ) -> Result<Multiplexer> {
        let path = path.as_ref().to_path_buf();
        let listener = crate::server::bind_private_unix(&path)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Listen {
                address: path.display().to_string(),
                source,
            })?;
        let listener = UnixListener::from_std(listener).map_err(|source| Error::Listen {
            address: path.display().to_string(),
            source,
        })?;
        let task = tokio::spawn(accept_loop(listener, upstream, options, path.clone()));
        Ok(Multiplexer { path, task })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        // The accept loop owns every client task (in its JoinSet): aborting it drops them
        // all, which closes their sockets.
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The next wait after an accept error: 100 ms, doubling up to 1 s.
pub(crate) fn next_backoff(current: Option<Duration>) -> Duration {
    match current {
        None => BACKOFF_START,
        Some(d) => (d * 2).min(BACKOFF_MAX),
    }
}

async fn accept_loop(
    listener: UnixListener,
    upstream: Client,
    options: MultiplexerOptions,
    path: PathBuf,
) {
    let mut clients = JoinSet::new();
    let mut backoff = None;
    let mut serial = 0u64;
    let euid = nix::unistd::geteuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = None;
                    serial += 1;
                    let name = format!("{}#{serial}", path.display());
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == euid => {}
                        Ok(cred) => {
                            tracing::warn!(
                                "QMP multiplexer {}: refused client {name} of uid {} (only uid {euid} may connect)",
                                path.display(), cred.uid()
                            );
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("QMP multiplexer: refused client {name}: cannot read its credentials: {e}");
                            continue;
                        }
                    }
                    if clients.len() >= options.max_clients {
                        tracing::warn!(
                            "QMP multiplexer {}: refused client {name}: already serving {} clients (the limit)",
                            path.display(), clients.len()
                        );
                        let line = error_line(None, "GenericError", &format!(
                            "too many QMP clients: the multiplexer serves at most {}", options.max_clients));
                        // Best effort; a fresh socket takes this small line at once.
                        let _ = stream.try_write(&line);
                        continue;
                    }
                    clients.spawn(serve_client(stream, upstream.clone(), options.clone(), name));
                }
                Err(e) => {
                    let wait = next_backoff(backoff);
                    backoff = Some(wait);
                    tracing::warn!("QMP multiplexer {}: accepting failed: {e}; retrying in {wait:?}", path.display());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = upstream.closed() => break,
                    }
                }
            },
            _ = upstream.closed() => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}

/// Replies and events for one client, as bytes, within a budget.
struct Outbox {
    buf: Vec<u8>,
    sent: usize,
    budget: usize,
}

impl Outbox {
    fn unread(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Queues `bytes`, or says the client is over its budget.
    fn push(&mut self, bytes: &[u8]) -> std::result::Result<(), usize> {
        let unread = self.unread();
        if unread + bytes.len() > self.budget {
            return Err(unread);
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent > 64 * 1024 && self.sent * 2 > self.buf.len() {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

type InFlight = Pin<Box<dyn Future<Output = (Option<Value>, String, Result<Response>)> + Send>>;

async fn in_flight_done(
    in_flight: &mut Option<InFlight>,
) -> (Option<Value>, String, Result<Response>) {
    match in_flight {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Serves one client: reads it (unless a command of its own is upstream), forwards its
/// events, writes its outbox. One task; ends when the client or upstream goes away, or the
/// client breaks a bound.
async fn serve_client(
    stream: UnixStream,
    upstream: Client,
    options: MultiplexerOptions,
    name: String,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut outbox = Outbox {
        buf: Vec::new(),
        sent: 0,
        budget: options.outbox_budget,
    };
    let version = upstream
        .greeting()
        .and_then(|g| serde_json::to_value(&g.version).ok())
        .unwrap_or(Value::Null);
    let greeting = line(&serde_json::json!({"QMP": {"version": version, "capabilities": []}}));
    let _ = outbox.push(&greeting);

    let mut events = upstream.subscribe(EventFilter::all());
    let mut negotiated = false;
    let mut in_flight: Option<InFlight> = None;
    let mut decoder = FrameDecoder::new(options.max_input_message);
    let mut buf = vec![0u8; 16 * 1024];

    let ending = 'session: loop {
        // Take the client's complete messages while none of its commands is upstream.
        while in_flight.is_none() {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(ProtocolError::Garbage { near }) => {
                    decoder.skip_garbage();
                    let desc = format!("JSON parse error, unexpected input {near:?}");
                    if let Err(unread) = outbox.push(&error_line(None, "GenericError", &desc)) {
                        break 'session over_budget(&name, unread, &outbox);
                    }
                    continue;
                }
                Err(e) => {
                    let _ = outbox.push(&error_line(None, "GenericError", &e.to_string()));
                    let _ = flush(&mut writer, &mut outbox).await;
                    break 'session format!("{e}");
                }
            };
            match handle(frame, &mut negotiated) {
                Handled::Reply(bytes) => {
                    if let Err(unread) = outbox.push(&bytes) {
                        break 'session over_budget(&name, unread, &outbox);
                    }
                }
                Handled::Forward(id, command, arguments) => {
                    let upstream = upstream.clone();
                    in_flight = Some(Box::pin(async move {
                        let result = upstream
                            .send(Request::new(command.clone()).arguments(arguments))
                            .await;
                        (id, command, result)
                    }));
                }
            }
        }
        tokio::select! {
            read = reader.read(&mut buf), if in_flight.is_none() => match read {
                Ok(0) | Err(_) => break 'session "the client went away".into(),
                Ok(n) => decoder.extend(&buf[..n]),
            },
            (id, command, result) = in_flight_done(&mut in_flight) => {
                in_flight = None;
                let bytes = match result {
                    Ok(response) => reply_line(&response, id),
                    Err(e) => error_line(id, "GenericError", &format!("`{command}`: {e}")),
                };
                if let Err(unread) = outbox.push(&bytes) {
                    break 'session over_budget(&name, unread, &outbox);
                }
            }
            event = events.recv() => match event {
                Ok(event) => {
                    if negotiated {
                        if let Err(unread) = outbox.push(&line(&event.to_json())) {
                            break 'session over_budget(&name, unread, &outbox);
                        }
                    }
                }
                Err(Error::EventsLost(n)) => tracing::warn!("QMP multiplexer client {name} lost {n} events"),
                Err(_) => break 'session "the upstream session ended".into(),
            },
            written = writer.write(&outbox.buf[outbox.sent..]), if outbox.unread() > 0 => match written {
                Ok(0) | Err(_) => break 'session "the client went away".into(),
                Ok(n) => outbox.sent += n,
            },
        }
    };
    tracing::debug!("QMP multiplexer client {name} ends: {ending}");
}

/// Writes what the outbox holds (used before closing on a fatal client error), bounded.
async fn flush(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    outbox: &mut Outbox,
) -> io::Result<()> {
    let bytes = &outbox.buf[outbox.sent..];
    crate::deadline::Deadline::after(Duration::from_secs(1))
        .timeout(writer.write_all(bytes))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

fn over_budget(name: &str, unread: usize, outbox: &Outbox) -> String {
    tracing::warn!(
        "QMP multiplexer: dropping client {name}: it left {unread} bytes unread and the next message would pass its {}-byte budget",
        outbox.budget
    );
    format!("over its output budget ({unread} bytes unread)")
}

enum Handled {
    /// Answered here.
    Reply(Vec<u8>),
    /// To send upstream: the client's id, the command, its arguments.
    Forward(Option<Value>, String, Value),
}

/// What to do with one client message, following QEMU's own checks and wording.
fn handle(frame: &[u8], negotiated: &mut bool) -> Handled {
    let request: Map<String, Value> = match serde_json::from_slice(frame) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return reply(None, "QMP input must be a JSON object"),
        Err(e) => return reply(None, &format!("JSON parse error, {e}")),
    };
    let id = request.get("id").cloned();
    if request.contains_key("exec-oob") {
        // No capabilities are offered, so oob is never on: as QEMU answers then.
        return reply(id, "QMP input member 'exec-oob' is unexpected");
    }
    let Some(name) = request.get("execute") else {
        return reply(id, "QMP input lacks member 'execute'");
    };
    let Some(name) = name.as_str() else {
        return reply(id, "QMP input member 'execute' must be a string");
    };
    let arguments = request.get("arguments").cloned().unwrap_or(Value::Null);
    if !arguments.is_null() && !arguments.is_object() {
        return reply(id, "QMP input member 'arguments' must be an object");
    }
    if name == "qmp_capabilities" {
        if *negotiated {
            return Handled::Reply(error_line(
                id,
                "CommandNotFound",
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        if let Some(enable) = arguments.get("enable").and_then(Value::as_array) {
            if let Some(capability) = enable.first() {
                let capability = capability.as_str().unwrap_or("?");
                return reply(id, &format!("Capability '{capability}' not available"));
            }
        }
        *negotiated = true;
        let mut bytes = b"{\"return\": {}".to_vec();
        append_id(&mut bytes, id.as_ref());
        return Handled::Reply(bytes);
    }
    if !*negotiated {
        return Handled::Reply(error_line(
            id,
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ));
    }
    Handled::Forward(id, name.to_owned(), arguments)
}

fn reply(id: Option<Value>, desc: &str) -> Handled {
    Handled::Reply(error_line(id, "GenericError", desc))
}

fn line(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// `{"return": <raw>, "id": id}` without re-parsing the reply.
fn reply_line(response: &Response, id: Option<Value>) -> Vec<u8> {
    match &response.result {
        Ok(raw) => {
            let mut bytes = Vec::with_capacity(raw.get().len() + 32);
            bytes.extend_from_slice(b"{\"return\": ");
            bytes.extend_from_slice(raw.get().as_bytes());
            append_id(&mut bytes, id.as_ref());
            bytes
        }
        Err(info) => {
            let mut bytes =
                line(&serde_json::json!({"error": {"class": info.class, "desc": info.desc}}));
            bytes.truncate(bytes.len() - 3);
            append_id(&mut bytes, id.as_ref());
            bytes
        }
    }
}

/// Closes the object begun in `bytes` with `, "id": id}\r\n` (or just `}\r\n`).
fn append_id(bytes: &mut Vec<u8>, id: Option<&Value>) {
    if let Some(id) = id {
        bytes.extend_from_slice(b", \"id\": ");
        if serde_json::to_writer(&mut *bytes, id).is_err() {
            bytes.extend_from_slice(b"null");
        }
    }
    bytes.extend_from_slice(b"}\r\n");
}

fn error_line(id: Option<Value>, class: &str, desc: &str) -> Vec<u8> {
    let mut bytes = line(&serde_json::json!({"error": {"class": class, "desc": desc}}));
    bytes.truncate(bytes.len() - 3);
    append_id(&mut bytes, id.as_ref());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second() {
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let next = next_backoff(d);
            seen.push(next.as_millis());
            d = Some(next);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn lines_are_valid_json() {
        let bytes = error_line(Some(Value::from("x")), "GenericError", "a \"b\"");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["id"], "x");
        assert_eq!(v["error"]["desc"], "a \"b\"");
        assert!(bytes.ends_with(b"}\r\n"));
        let response = Response {
            id: None,
            result: Ok(serde_json::value::to_raw_value(&[1, 2]).unwrap()),
        };
        let v: Value = serde_json::from_slice(&reply_line(&response, Some(7.into()))).unwrap();
        assert_eq!(v, serde_json::json!({"return": [1, 2], "id": 7}));
        let v: Value = serde_json::from_slice(&reply_line(&response, None)).unwrap();
        assert_eq!(v, serde_json::json!({"return": [1, 2]}));
    }

    #[test]
    fn outbox_budget_holds() {
        let mut outbox = Outbox {
            buf: Vec::new(),
            sent: 0,
            budget: 10,
        };
        assert!(outbox.push(b"12345").is_ok());
        assert!(outbox.push(b"12345").is_ok());
        assert_eq!(outbox.push(b"1"), Err(10));
        outbox.sent = 10;
        assert!(outbox.push(b"1234567890").is_ok());
    }
}
