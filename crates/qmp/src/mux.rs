//! A QMP multiplexer: one QMP session (e.g. a VM's only monitor) served to any number of
//! standard QMP clients on a UNIX socket.
//!
//! Each client gets real QMP: a greeting, capabilities negotiation (answered here), its
//! commands forwarded over the one upstream session with replies routed back to it under
//! its own ids, and every event once it has negotiated, as QEMU would do.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{Client, Request};
use crate::error::{Error, Result};
use crate::events::EventFilter;
use crate::framing::{FrameDecoder, DEFAULT_MAX_MESSAGE_SIZE};

/// A running multiplexer; dropping it stops serving and removes the socket file.
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
    /// - [`Error::Connect`] (with the path as `address`) when binding fails, e.g. because
    ///   `path` exists;
    /// - [`Error::Io`] when the socket file's mode cannot be set to 0600.
    pub fn serve(upstream: Client, path: impl AsRef<Path>) -> Result<Multiplexer> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path).map_err(|source| Error::Connect {
            address: path.display().to_string(),
            source,
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("securing {}", path.display()), e))?;
        let task = tokio::spawn(accept_loop(listener, upstream));
        Ok(Multiplexer { path, task })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, upstream: Client) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    clients.spawn(serve_client(stream, upstream.clone()));
                }
                Err(e) => {
                    tracing::warn!("QMP multiplexer stops accepting: {e}");
                    break;
                }
            },
            _ = upstream.closed() => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}

async fn serve_client(stream: UnixStream, upstream: Client) {
    let (mut reader, mut writer) = stream.into_split();
    // Replies and events for this client, written by one task, in order.
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<Value>();
    let write_task = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let mut bytes = serde_json::to_vec(&message).unwrap_or_default();
            bytes.extend_from_slice(b"\r\n");
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let version = upstream
        .greeting()
        .map(|g| serde_json::to_value(&g.version).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let _ = outbox.send(json!({"QMP": {"version": version, "capabilities": []}}));

    // Subscribed from the start, forwarded only once the client has negotiated.
    let mut events = upstream.subscribe(EventFilter::all());
    let (negotiated_tx, mut negotiated_rx) = tokio::sync::watch::channel(false);
    let event_outbox = outbox.clone();
    let event_task = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if *negotiated_rx.borrow_and_update()
                        && event_outbox.send(event.to_json()).is_err()
                    {
                        break;
                    }
                }
                Err(Error::EventsLost(n)) => tracing::warn!("a QMP client lost {n} events"),
                Err(_) => break,
            }
        }
    });

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_MESSAGE_SIZE);
    let mut buf = vec![0u8; 16 * 1024];
    'session: loop {
        let n = tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = upstream.closed() => break,
        };
        decoder.extend(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame.to_vec(),
                Ok(None) => break,
                Err(e) => {
                    let _ = outbox.send(error_reply(None, "GenericError", &e.to_string()));
                    break 'session;
                }
            };
            let reply = handle(&upstream, &frame, &negotiated_tx).await;
            if outbox.send(reply).is_err() {
                break 'session;
            }
        }
    }
    event_task.abort();
    drop(outbox);
    let _ = write_task.await;
}

async fn handle(
    upstream: &Client,
    frame: &[u8],
    negotiated: &tokio::sync::watch::Sender<bool>,
) -> Value {
    let request: Map<String, Value> = match serde_json::from_slice(frame) {
        Ok(Value::Object(map)) => map,
        _ => return error_reply(None, "GenericError", "JSON parse error: expected an object"),
    };
    let id = request.get("id").cloned();
    let Some(name) = request
        .get("execute")
        .or_else(|| request.get("exec-oob"))
        .and_then(Value::as_str)
    else {
        return error_reply(id, "GenericError", "QMP input lacks member 'execute'");
    };
    let arguments = request.get("arguments").cloned().unwrap_or(Value::Null);
    if name == "qmp_capabilities" {
        if *negotiated.borrow() {
            return error_reply(
                id,
                "CommandNotFound",
                "Capabilities negotiation is already complete, command ignored",
            );
        }
        negotiated.send_replace(true);
        return with_id(json!({"return": {}}), id);
    }
    if !*negotiated.borrow() {
        return error_reply(
            id,
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        );
    }
    match upstream.send(Request::new(name).arguments(arguments)).await {
        Ok(response) => with_id(response.to_json_without_id(), id),
        Err(e) => error_reply(id, "GenericError", &e.to_string()),
    }
}

fn with_id(mut reply: Value, id: Option<Value>) -> Value {
    if let (Some(id), Some(object)) = (id, reply.as_object_mut()) {
        object.insert("id".into(), id);
    }
    reply
}

fn error_reply(id: Option<Value>, class: &str, desc: &str) -> Value {
    with_id(json!({"error": {"class": class, "desc": desc}}), id)
}
