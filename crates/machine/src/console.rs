//! The serial console: always drained, so QEMU can never block on it, with expect-style
//! waits that have deadlines.
//!
//! From the moment of launch a task reads the console into a bounded ring buffer (the
//! oldest bytes go first when it is full, and are counted) and, when asked, into a raw log
//! file. Readers keep a cursor into that stream: [`Console::expect`] looks at what arrived
//! after the cursor and moves it past the match.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::sock::{write_all_before, WriteFailed};

mod byte_ring;
mod pattern;

use byte_ring::ByteRing;
pub use pattern::{Pattern, REGEX_LOOKBACK};

/// Default size of the console's ring buffer.
pub const DEFAULT_CONSOLE_BUFFER: usize = 1024 * 1024;
/// How much recent output an error quotes.
const QUOTE: usize = 2048;
/// Deadline for a write the guest does not take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A successful [`Console::expect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The matched text.
    pub matched: String,
    /// What came between the cursor and the match.
    pub before: String,
    /// Bytes the ring buffer dropped before they could be examined (0 normally).
    pub lost: u64,
}

#[derive(Debug)]
struct Buffer {
    ring: ByteRing,
    /// Every byte ever received.
    total: u64,
    /// Bytes dropped from the ring's front.
    dropped: u64,
    /// Why the stream ended, once it has.
    end: Option<String>,
}

impl Buffer {
    fn oldest(&self) -> u64 {
        self.total - self.ring.len() as u64
    }
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<Buffer>,
    arrived: Notify,
    /// The reader's position (absolute offset) shared by all handles.
    cursor: Mutex<u64>,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        qmp::sync::lock_unpoisoned(&self.buffer)
    }

    fn cursor(&self) -> MutexGuard<'_, u64> {
        qmp::sync::lock_unpoisoned(&self.cursor)
    }
}

/// A serial console. Cheap to clone; clones share the buffer and the cursor.
#[derive(Debug, Clone)]
pub struct Console {
    shared: Arc<Shared>,
    /// Writes are whole: one at a time.
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    drain: Arc<JoinHandle<()>>,
    name: String,
}

impl Console {
    /// Starts draining `stream` (our end of the console) into a ring of `capacity` bytes,
    /// and into `log` if given. Must be called inside a tokio runtime.
    ///
    /// A [`Machine`](crate::Machine) starts its own console; this is for a console socket
    /// the caller set up itself (the Python engine's `QEMUMachine` passes its own).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the ring buffer cannot be allocated (`OutOfMemory`) or the
    /// stream cannot be set up for tokio (non-blocking, registered with the runtime).
    pub fn start(
        name: impl Into<String>,
        stream: std::os::unix::net::UnixStream,
        capacity: usize,
        log: Option<File>,
    ) -> Result<Console> {
        let ring = ByteRing::new(capacity).map_err(|e| {
            Error::io(
                format!("allocating a console buffer of {capacity} bytes"),
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, e),
            )
        })?;
        let (reader, writer) = crate::sock::split(stream, "console")?;
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                ring,
                total: 0,
                dropped: 0,
                end: None,
            }),
            arrived: Notify::new(),
            cursor: Mutex::new(0),
        });
        let drain = tokio::spawn(drain(reader, shared.clone(), log));
        Ok(Console {
            shared,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            drain: Arc::new(drain),
            name: name.into(),
        })
    }

    /// Everything still in the ring buffer (the newest bytes), regardless of the cursor.
    pub fn history(&self) -> Vec<u8> {
        let buffer = self.shared.buffer();
        let mut out = Vec::with_capacity(buffer.ring.len());
        buffer.ring.copy_from(0, &mut out);
        out
    }

    /// What arrived after the cursor; moves the cursor to the end.
    pub fn read_available(&self) -> Vec<u8> {
        let buffer = self.shared.buffer();
        let mut cursor = self.shared.cursor();
        let from = (*cursor).max(buffer.oldest());
        let mut out = Vec::new();
        buffer
            .ring
            .copy_from((from - buffer.oldest()) as usize, &mut out);
        *cursor = buffer.total;
        out
    }

    /// Waits for output after the cursor and returns it (moving the cursor); fails once
    /// the console has closed and everything was read.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Console`] once the console has closed and everything in it was read.
    pub async fn read(&self) -> Result<Vec<u8>> {
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let bytes = self.read_available();
            if !bytes.is_empty() {
                return Ok(bytes);
            }
            if let Some(reason) = self.shared.buffer().end.clone() {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::Console {
                        problem: format!("the console closed ({reason})"),
                        last_output: String::new(),
                    },
                ));
            }
            arrived.await;
        }
    }

    /// Total bytes received, and bytes the ring dropped because nobody read them in time.
    pub fn counters(&self) -> (u64, u64) {
        let buffer = self.shared.buffer();
        (buffer.total, buffer.dropped)
    }

    /// True once the console stream has ended (QEMU closed it or exited).
    pub fn is_closed(&self) -> bool {
        self.shared.buffer().end.is_some()
    }

    /// Writes `bytes` to the guest, waiting at most 10 s for the socket to take them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the socket does not take all of `bytes` within 10 s;
    /// [`ErrorKind::Io`] when it fails.
    pub async fn write(&self, bytes: &[u8]) -> Result<()> {
        let deadline = crate::deadline::deadline_after(WRITE_TIMEOUT);
        let timeout = |written| {
            Error::new(
                self.name.clone(),
                ErrorKind::Timeout {
                    awaited: "the console to take input".into(),
                    after: WRITE_TIMEOUT,
                    seen: format!("{written} of {} bytes written", bytes.len()),
                },
            )
        };
        let writer = tokio::time::timeout_at(deadline, self.writer.lock())
            .await
            .map_err(|_| timeout(0))?;
        match write_all_before(&writer, bytes, deadline).await {
            Ok(()) => Ok(()),
            Err(WriteFailed::Deadline { written }) => Err(timeout(written)),
            Err(WriteFailed::Io(e)) => Err(Error::io("writing to the console", e)),
        }
    }

    /// Writes `line` and a newline.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub async fn send_line(&self, line: &str) -> Result<()> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write(&bytes).await
    }

    /// Waits for `pattern` after the cursor, at most `timeout`; no trailing newline needed.
    ///
    /// ```no_run
    /// # async fn f(vm: &qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    ///
    /// let console = vm.console()?;
    /// console.expect("login:", Duration::from_secs(60)).await?;
    /// console.send_line("root").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] (with the last output) when `pattern` does not show within
    /// `timeout`; [`ErrorKind::Console`] when the console closes first.
    pub async fn expect(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<Match> {
        self.expect_any(pattern, std::iter::empty::<Pattern>(), timeout)
            .await
    }

    /// Waits for `pattern`, failing at once if any of `failures` shows up first (e.g.
    /// `Kernel panic`). Moves the cursor past the match. Both take what
    /// [`expect`](Self::expect) takes (`&str`, `String`, bytes, a
    /// [`Regex`](regex::bytes::Regex), a [`Pattern`]).
    ///
    /// ```no_run
    /// # async fn f(console: &qemu_machine::Console) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// console.expect_any("login:", ["Kernel panic", "Oops"], Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when `pattern` does not show within `timeout`;
    /// [`ErrorKind::Console`] when one of `failures` shows first, or the console closes; both
    /// quote the last output.
    pub async fn expect_any<F: Into<Pattern>>(
        &self,
        pattern: impl Into<Pattern>,
        failures: impl IntoIterator<Item = F>,
        timeout: Duration,
    ) -> Result<Match> {
        let pattern = &pattern.into();
        let failures: &[Pattern] = &failures.into_iter().map(Into::into).collect::<Vec<_>>();
        let deadline = crate::deadline::deadline_after(timeout);
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = *self.shared.cursor();
        let mut searched = 0;
        let mut failure_searched = vec![0; failures.len()];
        let mut lost = 0u64;
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let end = {
                let buffer = self.shared.buffer();
                let have = window_start + window.len() as u64;
                if have < buffer.oldest() {
                    // Overrun: what we had not copied yet is gone.
                    lost += buffer.oldest() - have;
                    window.clear();
                    window_start = buffer.oldest();
                    searched = 0;
                    failure_searched.iter_mut().for_each(|s| *s = 0);
                }
                let next = window_start + window.len() as u64;
                buffer
                    .ring
                    .copy_from((next - buffer.oldest()) as usize, &mut window);
                buffer.end.clone()
            };
            for (failure, from) in failures.iter().zip(failure_searched.iter_mut()) {
                if let Some((start, stop)) = failure.find(&window, *from) {
                    self.advance(window_start + stop as u64);
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::Console {
                            problem: format!(
                            "failure pattern {failure} appeared while waiting for {pattern}: {:?}",
                            String::from_utf8_lossy(&window[start..stop])
                        ),
                            last_output: quote(&window),
                        },
                    ));
                }
                *from = failure.resume_from(&window, *from);
            }
            if let Some((start, stop)) = pattern.find(&window, searched) {
                self.advance(window_start + stop as u64);
                return Ok(Match {
                    matched: String::from_utf8_lossy(&window[start..stop]).into_owned(),
                    before: String::from_utf8_lossy(&window[..start]).into_owned(),
                    lost,
                });
            }
            searched = pattern.resume_from(&window, searched);
            // Keep the window bounded like the ring: drop what can no longer match.
            let keep_from =
                searched.min(failure_searched.iter().copied().min().unwrap_or(searched));
            if window.len() > 2 * REGEX_LOOKBACK.max(QUOTE) && keep_from > QUOTE {
                let cut = keep_from - QUOTE;
                window.drain(..cut);
                window_start += cut as u64;
                searched -= cut;
                failure_searched.iter_mut().for_each(|s| *s -= cut);
            }
            if let Some(reason) = end {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::Console {
                        problem: format!(
                            "the console closed ({reason}) while waiting for {pattern}"
                        ),
                        last_output: quote(&window),
                    },
                ));
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::Timeout {
                        awaited: format!("console output {pattern}"),
                        after: timeout,
                        seen: format!("last console output: {:?}", quote(&window)),
                    },
                ));
            }
        }
    }

    fn advance(&self, to: u64) {
        let mut cursor = self.shared.cursor();
        *cursor = (*cursor).max(to);
    }

    /// Sends `command` as a line, then waits for `pattern`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write), then as [`expect`](Self::expect).
    pub async fn exec_and_expect(
        &self,
        command: &str,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<Match> {
        self.send_line(command).await?;
        self.expect(pattern, timeout).await
    }

    /// Sends `interrupt` every `interval` until `pattern` shows up (e.g. to stop a
    /// bootloader's countdown), at most `timeout` in all.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write); [`ErrorKind::Timeout`] when `pattern` has not shown up
    /// within `timeout`; as [`expect_any`](Self::expect_any) otherwise (the console
    /// closed).
    pub async fn interrupt_until(
        &self,
        pattern: impl Into<Pattern>,
        interrupt: &[u8],
        interval: Duration,
        timeout: Duration,
    ) -> Result<Match> {
        let pattern = pattern.into();
        let deadline = crate::deadline::deadline_after(timeout);
        loop {
            self.write(interrupt).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .expect_any(&pattern, std::iter::empty::<Pattern>(), interval.min(left))
                .await
            {
                Err(e) if matches!(e.kind(), ErrorKind::Timeout { .. }) => {
                    if Instant::now() < deadline {
                        continue;
                    }
                    let ErrorKind::Timeout { seen, .. } = e.into_kind() else {
                        unreachable!("matched above")
                    };
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::Timeout {
                            awaited: format!("console output {pattern} (interrupting)"),
                            after: timeout,
                            seen,
                        },
                    ));
                }
                other => return other,
            }
        }
    }

    /// The machine's name, for errors.
    pub(crate) fn machine_name(&self) -> &str {
        &self.name
    }

    /// Stops draining at once.
    pub(crate) fn stop(&self) {
        self.drain.abort();
    }

    /// Waits up to `timeout` for the stream to end (after QEMU exits), then stops draining.
    pub(crate) async fn close(&self, timeout: Duration) {
        let deadline = crate::deadline::deadline_after(timeout);
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.is_closed() || Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
        self.drain.abort();
        let mut buffer = self.shared.buffer();
        buffer.end.get_or_insert_with(|| "closed".into());
    }
}

fn quote(window: &[u8]) -> String {
    let start = window.len().saturating_sub(QUOTE);
    String::from_utf8_lossy(&window[start..]).into_owned()
}

async fn drain(stream: OwnedReadHalf, shared: Arc<Shared>, mut log: Option<File>) {
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        match stream.try_read(&mut buf) {
            Ok(0) => break "end of stream".to_string(),
            Ok(n) => {
                if let Some(file) = &mut log {
                    if let Err(e) = file.write_all(&buf[..n]) {
                        tracing::warn!("console log write failed, logging stops: {e}");
                        log = None;
                    }
                }
                {
                    let mut buffer = shared.buffer();
                    buffer.dropped += buffer.ring.push(&buf[..n]) as u64;
                    buffer.total += n as u64;
                }
                shared.arrived.notify_waiters();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = stream.readable().await {
                    break e.to_string();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break e.to_string(),
        }
    };
    shared.buffer().end = Some(reason);
    shared.arrived.notify_waiters();
}
