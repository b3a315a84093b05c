//! A client for qemu-guest-agent (QGA), done the way peers learned the hard way:
//!
//! - every session starts with `0xFF` and `guest-sync-delimited` carrying a fresh id, and
//!   is only used once the agent echoes that id: replies to anything older are discarded;
//! - the sync is retried until the agent answers or the deadline passes (an agent that
//!   has not opened its port yet, or an early connection, may never answer the first try);
//! - commands carry ids, so a late reply can never be taken for the next one's;
//! - `guest-exec` output arrives only when the process ends: [`GuestAgent::exec`] polls
//!   `guest-exec-status` until then, under one deadline;
//! - `guest-shutdown` gets no reply when it works: a timeout or a closed connection is
//!   success there.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use qmp::{Address, Client, Request};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};

/// Per-attempt deadline of `guest-sync-delimited`.
const SYNC_ATTEMPT: Duration = Duration::from_millis(500);
/// How long a connection is watched for a QMP greeting.
const GREETING_WAIT: Duration = Duration::from_millis(500);

/// Connects to `address` and reads what it says by itself within `wait`: true when that
/// is a QMP greeting (`{"QMP": ...`). Reads at most a few bytes.
async fn greets_as_qmp(address: &Address, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut first = [0u8; 16];
        let mut filled = 0;
        let read_some = |n: std::io::Result<usize>| match n {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        };
        match address {
            Address::Unix(path) => {
                let mut stream = tokio::net::UnixStream::connect(path).await.ok()?;
                while filled < first.len() {
                    filled += read_some(stream.read(&mut first[filled..]).await)?;
                }
            }
            Address::Tcp(host, port) => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .ok()?;
                while filled < first.len() {
                    filled += read_some(stream.read(&mut first[filled..]).await)?;
                }
            }
        }
        Some(first)
    };
    match tokio::time::timeout(wait, attempt).await {
        Ok(Some(first)) => {
            let text: String = String::from_utf8_lossy(&first)
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            text.starts_with("{\"QMP\"")
        }
        _ => false,
    }
}
/// Default deadline for a guest-agent command.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per `guest-file-read`/`guest-file-write` call.
const FILE_CHUNK: usize = 256 * 1024;
/// The largest file [`GuestAgent::read_file`] reads.
const MAX_READ_FILE: usize = 64 * 1024 * 1024;

/// What a command run with [`GuestAgent::exec`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code, when it exited (rather than being killed).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// A synced guest-agent session. Cheap to clone.
///
/// ```no_run
/// # async fn f() -> qemu_machine::Result<()> {
/// use qemu_machine::Machine;
/// use std::time::Duration;
///
/// let builder = Machine::builder("qemu-system-x86_64").guest_agent();
/// let mut vm = Machine::new(builder);
/// vm.launch().await?;
/// // ... boot a guest that runs qemu-ga ...
/// let agent = vm.guest_agent(Duration::from_secs(120)).await?;
/// agent.ping().await?;
/// let output = agent.exec("/bin/uname", &["-r"], Duration::from_secs(10)).await?;
/// println!("{}", String::from_utf8_lossy(&output.stdout));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GuestAgent {
    client: Client,
    name: String,
}

fn fresh_sync_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Distinct across processes and restarts too: mix in the pid and the time.
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (time ^ (u64::from(std::process::id()) << 32))
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
        & ((1 << 53) - 1)
}

impl GuestAgent {
    /// A session over a connected stream (our end of the agent's socketpair), synced
    /// within `timeout`. `alive` is asked between attempts; when it says QEMU is gone the
    /// wait ends at once.
    pub(crate) async fn over_stream(
        name: impl Into<String>,
        stream: UnixStream,
        timeout: Duration,
        alive: impl FnMut() -> bool,
    ) -> Result<GuestAgent> {
        let name = name.into();
        let client = Self::builder(&name)
            .adopt_unix(stream)
            .await
            .map_err(|e| qmp_error(&name, e))?;
        let agent = GuestAgent { client, name };
        agent.sync(timeout, alive).await?;
        Ok(agent)
    }

    /// A session to an agent socket (`-chardev socket,path=...,server=on`, or a TCP
    /// address), reconnecting until it syncs or `timeout` passes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when no agent answered in time; [`ErrorKind::GuestAgent`] at
    /// once when `address` turns out to be a QMP monitor (it greets as one).
    pub async fn connect(address: &Address, timeout: Duration) -> Result<GuestAgent> {
        let name = address.to_string();
        let deadline = crate::deadline::deadline_after(timeout);
        let mut last_error = String::from("no attempt finished");
        let mut diagnosed = false;
        while Instant::now() < deadline {
            match Self::builder(&name)
                .connect_timeout(SYNC_ATTEMPT)
                .connect(address)
                .await
            {
                Ok(client) => {
                    let agent = GuestAgent {
                        client,
                        name: name.clone(),
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    match agent.sync(left.min(SYNC_ATTEMPT * 4), || true).await {
                        Ok(()) => return Ok(agent),
                        Err(e) => last_error = e.to_string(),
                    }
                    agent.client.close();
                    // An agent never speaks first; a QMP monitor greets at once. Asked once,
                    // after a failed sync, so that a working agent costs nothing.
                    if !diagnosed {
                        diagnosed = true;
                        let left = deadline.saturating_duration_since(Instant::now());
                        if greets_as_qmp(address, GREETING_WAIT.min(left)).await {
                            return Err(Error::new(
                                name.clone(),
                                ErrorKind::GuestAgent {
                                    message: format!(
                                        "{address} is a QMP monitor, not a guest agent \
                                         (it sent a QMP greeting)"
                                    ),
                                },
                            ));
                        }
                    }
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(Error::new(
            name,
            ErrorKind::Timeout {
                awaited: "the guest agent to answer guest-sync-delimited".into(),
                after: timeout,
                seen: last_error,
            },
        ))
    }

    fn builder(name: &str) -> qmp::ClientBuilder {
        Client::builder()
            .name(format!("{name}/qga"))
            .await_greeting(false)
            .negotiate(false)
            .command_timeout(DEFAULT_AGENT_TIMEOUT)
    }

    /// Resyncs: `0xFF`, then `guest-sync-delimited` with a fresh id until the agent echoes it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the agent has not echoed an id within `timeout`;
    /// [`ErrorKind::GuestAgent`] when the connection closes or `alive` says QEMU is gone;
    /// [`ErrorKind::Qmp`] for any other failure of the connection.
    pub async fn sync(&self, timeout: Duration, mut alive: impl FnMut() -> bool) -> Result<()> {
        let deadline = crate::deadline::deadline_after(timeout);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let id = fresh_sync_id();
            self.client
                .send_raw(&[0xff])
                .map_err(|e| qmp_error(&self.name, e))?;
            let left = deadline.saturating_duration_since(Instant::now());
            let request = Request::new("guest-sync-delimited")
                .arguments(json!({"id": id}))
                .timeout(SYNC_ATTEMPT.min(left).max(Duration::from_millis(1)));
            match self.client.execute_request(request).await {
                Ok(echo) if echo.as_u64() == Some(id) => return Ok(()),
                Ok(other) => tracing::debug!(agent = %self.name, "stale sync reply {other}"),
                Err(e) if e.is_timeout() => {}
                Err(e) if e.is_disconnected() => {
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::GuestAgent {
                            message: format!("the connection to the agent closed: {e}"),
                        },
                    ))
                }
                Err(e) => return Err(qmp_error(&self.name, e)),
            }
            if !alive() {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::GuestAgent {
                        message: "QEMU exited while waiting for the guest agent".into(),
                    },
                ));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::Timeout {
                        awaited: "the guest agent to answer guest-sync-delimited".into(),
                        after: timeout,
                        seen: format!(
                            "{attempts} attempts unanswered (is qemu-ga running in the guest?)"
                        ),
                    },
                ));
            }
        }
    }

    /// Runs any agent command and returns its `return` value.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Qmp`]: the agent's error reply ([`qmp::Error::Command`]), a timeout, or
    /// a closed connection.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value> {
        self.client
            .execute(command, arguments)
            .await
            .map_err(|e| qmp_error(&self.name, e))
    }

    /// `guest-ping`.
    ///
    /// ```no_run
    /// # async fn f(agent: &qemu_machine::GuestAgent) -> qemu_machine::Result<()> {
    /// agent.ping().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn ping(&self) -> Result<()> {
        self.execute("guest-ping", Value::Null).await.map(drop)
    }

    /// `guest-info`: the agent's version and its commands.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn info(&self) -> Result<Value> {
        self.execute("guest-info", Value::Null).await
    }

    /// `guest-get-osinfo`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn get_osinfo(&self) -> Result<Value> {
        self.execute("guest-get-osinfo", Value::Null).await
    }

    /// `guest-network-get-interfaces`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn network_get_interfaces(&self) -> Result<Value> {
        self.execute("guest-network-get-interfaces", Value::Null)
            .await
    }

    /// `guest-fsfreeze-status`: `"thawed"` or `"frozen"`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn fsfreeze_status(&self) -> Result<String> {
        let status = self.execute("guest-fsfreeze-status", Value::Null).await?;
        Ok(status.as_str().unwrap_or_default().to_string())
    }

    /// `guest-fsfreeze-freeze`: how many filesystems were frozen.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn fsfreeze_freeze(&self) -> Result<u64> {
        let count = self.execute("guest-fsfreeze-freeze", Value::Null).await?;
        Ok(count.as_u64().unwrap_or(0))
    }

    /// `guest-fsfreeze-thaw`: how many filesystems were thawed.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn fsfreeze_thaw(&self) -> Result<u64> {
        let count = self.execute("guest-fsfreeze-thaw", Value::Null).await?;
        Ok(count.as_u64().unwrap_or(0))
    }

    /// Runs `path args...` in the guest and waits (at most `timeout`) for it to end.
    ///
    /// ```no_run
    /// # async fn f(agent: &qemu_machine::GuestAgent) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    ///
    /// let output = agent.exec("/bin/sh", &["-c", "echo hi"], Duration::from_secs(10)).await?;
    /// assert_eq!(output.exit_code, Some(0));
    /// assert_eq!(output.stdout, b"hi\n");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute); [`ErrorKind::Timeout`] when the program has not
    /// exited within `timeout`; [`ErrorKind::GuestAgent`] when the agent's answers make no
    /// sense (no pid, bad base64).
    pub async fn exec(&self, path: &str, args: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let deadline = crate::deadline::deadline_after(timeout);
        let started = self
            .execute(
                "guest-exec",
                json!({"path": path, "arg": args, "capture-output": true}),
            )
            .await?;
        let pid = started["pid"].as_i64().ok_or_else(|| {
            Error::new(
                self.name.clone(),
                ErrorKind::GuestAgent {
                    message: format!("guest-exec returned no pid: {started}"),
                },
            )
        })?;
        let mut pause = Duration::from_millis(5);
        loop {
            let status = self
                .execute("guest-exec-status", json!({"pid": pid}))
                .await?;
            if status["exited"].as_bool() == Some(true) {
                return Ok(ExecOutput {
                    exit_code: status["exitcode"].as_i64().map(|c| c as i32),
                    signal: status["signal"].as_i64().map(|s| s as i32),
                    stdout: self.decode(&status["out-data"])?,
                    stderr: self.decode(&status["err-data"])?,
                });
            }
            if crate::deadline::deadline_after(pause) > deadline {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::Timeout {
                        awaited: format!("`{path}` (guest pid {pid}) to exit"),
                        after: timeout,
                        seen: "still running".into(),
                    },
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn decode(&self, data: &Value) -> Result<Vec<u8>> {
        match data.as_str() {
            None => Ok(Vec::new()),
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| {
                    Error::new(
                        self.name.clone(),
                        ErrorKind::GuestAgent {
                            message: format!("bad base64 from the agent: {e}"),
                        },
                    )
                }),
        }
    }

    async fn open(&self, path: &str, mode: &str) -> Result<i64> {
        let handle = self
            .execute("guest-file-open", json!({"path": path, "mode": mode}))
            .await?;
        handle.as_i64().ok_or_else(|| {
            Error::new(
                self.name.clone(),
                ErrorKind::GuestAgent {
                    message: format!("guest-file-open returned {handle}"),
                },
            )
        })
    }

    /// Reads a whole guest file, in chunks.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::GuestAgent`] when the file is larger than 64 MiB (or endless), with
    /// how much was read.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let handle = self.open(path, "r").await?;
        let mut content = Vec::new();
        let result = async {
            loop {
                let chunk = self
                    .execute(
                        "guest-file-read",
                        json!({"handle": handle, "count": FILE_CHUNK}),
                    )
                    .await?;
                let bytes = self.decode(&chunk["buf-b64"])?;
                if content.len() + bytes.len() > MAX_READ_FILE {
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::GuestAgent {
                            message: format!(
                                "`{path}` is larger than {} MiB (read {} bytes so far); \
                                 read it in parts (guest-file-read) instead",
                                MAX_READ_FILE >> 20,
                                content.len() + bytes.len()
                            ),
                        },
                    ));
                }
                content.extend(bytes);
                if chunk["eof"].as_bool() != Some(false) {
                    return Ok(());
                }
            }
        }
        .await;
        let closed = self
            .execute("guest-file-close", json!({"handle": handle}))
            .await;
        result.and(closed).map(|_| content)
    }

    /// Writes `data` to a guest file (created or truncated), in chunks.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute) (opening, writing or closing the file);
    /// [`ErrorKind::GuestAgent`] when the agent returns no file handle.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let handle = self.open(path, "w").await?;
        let result = async {
            for chunk in data.chunks(FILE_CHUNK) {
                let encoded = base64::engine::general_purpose::STANDARD.encode(chunk);
                self.execute(
                    "guest-file-write",
                    json!({"handle": handle, "buf-b64": encoded}),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        let closed = self
            .execute("guest-file-close", json!({"handle": handle}))
            .await;
        result.and(closed).map(drop)
    }

    /// `guest-shutdown` (`mode`: `powerdown`, `halt` or `reboot`). The agent does not
    /// answer when it works, so a timeout or a closed connection is success.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Qmp`] when the agent refuses the command (a timeout or a closed
    /// connection is success).
    pub async fn shutdown(&self, mode: &str) -> Result<()> {
        let request = Request::new("guest-shutdown")
            .arguments(json!({"mode": mode}))
            .timeout(Duration::from_secs(5));
        match self.client.execute_request(request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_timeout() || e.is_disconnected() => Ok(()),
            Err(e) => Err(qmp_error(&self.name, e)),
        }
    }

    /// Ends the session.
    pub fn close(&self) {
        self.client.close();
    }
}

fn qmp_error(name: &str, error: qmp::Error) -> Error {
    Error::qmp(name.to_string(), error)
}
