//! A scriptable fake QMP peer, for testing what real QEMU will not do on demand: garbage,
//! split or packed frames, replies with strange ids, silence.
//!
//! It is public so users can test their own QMP code with it. Create it inside a tokio
//! runtime.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use qmp::fake::FakePeer;
//! use serde_json::json;
//!
//! let (ours, mut fake) = FakePeer::pair()?;
//! let server = tokio::spawn(async move {
//!     fake.handshake().await?;
//!     let request = fake.expect_command("query-status", Duration::from_secs(5)).await?;
//!     fake.reply(&request, json!({"running": true, "status": "running"})).await?;
//!     std::io::Result::Ok(())
//! });
//! let client = qmp::Client::builder().adopt_unix(ours).await?;
//! let status = client.execute("query-status", json!({})).await?;
//! assert_eq!(status["status"], "running");
//! server.await??;
//! # Ok(()) }
//! ```

use std::io;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::framing::{FrameDecoder, DEFAULT_MAX_MESSAGE_SIZE};

/// The fake's end of a connection.
#[derive(Debug)]
pub struct FakePeer {
    stream: UnixStream,
    decoder: FrameDecoder,
}

/// What [`FakePeer::serve`] does with one command.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `{"return": value}` with the command's id.
    Return(Value),
    /// `{"error": {"class": ..., "desc": ...}}` with the command's id.
    Error(String, String),
    /// These bytes, verbatim.
    Raw(Vec<u8>),
    /// No answer at all.
    Silence,
    /// Close the connection.
    Close,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("fake QMP peer: no {what}"))
}

impl FakePeer {
    /// A connected pair: the end to hand to the code under test, and the fake.
    ///
    /// # Errors
    ///
    /// The I/O error when the socketpair cannot be created or registered with the runtime.
    pub fn pair() -> io::Result<(std::os::unix::net::UnixStream, FakePeer)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        Ok((ours, FakePeer::adopt(theirs)?))
    }

    /// Wraps a connected std stream.
    ///
    /// # Errors
    ///
    /// The I/O error when the stream cannot be made non-blocking or registered with the
    /// runtime.
    pub fn adopt(stream: std::os::unix::net::UnixStream) -> io::Result<FakePeer> {
        stream.set_nonblocking(true)?;
        Ok(FakePeer {
            stream: UnixStream::from_std(stream)?,
            decoder: FrameDecoder::new(DEFAULT_MAX_MESSAGE_SIZE),
        })
    }

    /// Sends bytes verbatim.
    ///
    /// # Errors
    ///
    /// The I/O error of the write.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends one message followed by `\r\n`.
    ///
    /// # Errors
    ///
    /// The I/O error of the write.
    pub async fn send(&mut self, message: &Value) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(message)?;
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes).await
    }

    /// Sends a QEMU 7.2-like greeting offering `oob`.
    ///
    /// # Errors
    ///
    /// The I/O error of the write.
    pub async fn greet(&mut self) -> io::Result<()> {
        self.send(&json!({"QMP": {
            "version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"},
            "capabilities": ["oob"],
        }}))
        .await
    }

    /// Greets and answers `qmp_capabilities`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv) and [`send`](Self::send).
    pub async fn handshake(&mut self) -> io::Result<()> {
        self.greet().await?;
        let request = self
            .expect_command("qmp_capabilities", Duration::from_secs(10))
            .await?;
        self.reply(&request, json!({})).await
    }

    /// Sends an event with a timestamp.
    ///
    /// # Errors
    ///
    /// The I/O error of the write.
    pub async fn event(&mut self, name: &str, data: Value) -> io::Result<()> {
        self.send(&json!({
            "event": name,
            "data": data,
            "timestamp": {"seconds": 1, "microseconds": 0},
        }))
        .await
    }

    /// The next message from the client.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] after `timeout`, [`io::ErrorKind::UnexpectedEof`] when
    /// the client hangs up, [`io::ErrorKind::InvalidData`] for a frame that is not JSON, or
    /// the I/O error of the read.
    pub async fn recv(&mut self, timeout: Duration) -> io::Result<Value> {
        crate::deadline::Deadline::after(timeout)
            .timeout(self.recv_forever())
            .await
            .map_err(|_| timed_out("message from the client"))?
    }

    async fn recv_forever(&mut self) -> io::Result<Value> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return serde_json::from_slice(frame).map_err(io::Error::from);
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "fake QMP peer: the client closed the connection",
                ));
            }
            self.decoder.extend(&buf[..n]);
        }
    }

    /// The next message, which must be `{"execute": name, ...}`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv); [`io::ErrorKind::InvalidData`] when the message is not that
    /// command.
    pub async fn expect_command(&mut self, name: &str, timeout: Duration) -> io::Result<Value> {
        let message = self.recv(timeout).await?;
        if message["execute"] != name && message["exec-oob"] != name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("fake QMP peer: expected `{name}`, got {message}"),
            ));
        }
        Ok(message)
    }

    /// Answers `request` with `{"return": value}` and its id.
    ///
    /// # Errors
    ///
    /// The I/O error of the write.
    pub async fn reply(&mut self, request: &Value, value: Value) -> io::Result<()> {
        let mut reply = json!({"return": value});
        if let Some(id) = request.get("id") {
            reply["id"] = id.clone();
        }
        self.send(&reply).await
    }

    /// Answers `request` with an error and its id.
    ///
    /// # Errors
    ///
    /// The I/O error of the write.
    pub async fn reply_error(
        &mut self,
        request: &Value,
        class: &str,
        desc: &str,
    ) -> io::Result<()> {
        let mut reply = json!({"error": {"class": class, "desc": desc}});
        if let Some(id) = request.get("id") {
            reply["id"] = id.clone();
        }
        self.send(&reply).await
    }

    /// Answers every command with what `handler` says until the client hangs up (`Ok`) or
    /// the handler says [`Reply::Close`].
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv) (but a hang-up ends it with `Ok`) and [`send`](Self::send).
    pub async fn serve(mut self, mut handler: impl FnMut(&Value) -> Reply) -> io::Result<()> {
        loop {
            let request = match self.recv_forever().await {
                Ok(request) => request,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            match handler(&request) {
                Reply::Return(value) => self.reply(&request, value).await?,
                Reply::Error(class, desc) => self.reply_error(&request, &class, &desc).await?,
                Reply::Raw(bytes) => self.send_raw(&bytes).await?,
                Reply::Silence => {}
                Reply::Close => return Ok(()),
            }
        }
    }

    /// Waits until the client closes its end, discarding what it sends.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] when the client has not closed within `timeout`, or the
    /// I/O error of the read.
    pub async fn wait_closed(&mut self, timeout: Duration) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        crate::deadline::Deadline::after(timeout)
            .timeout(async {
                loop {
                    match self.stream.read(&mut buf).await {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            })
            .await
            .map_err(|_| timed_out("close from the client"))?
    }
}
