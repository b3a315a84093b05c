//! The qtest protocol: line-based commands that poke guest memory, I/O ports, the virtual
//! clock and interrupt lines from the host, as QEMU's device tests do.
//!
//! Replies are `OK [value]` or `FAIL message`; `IRQ raise N` / `IRQ lower N` lines may come
//! at any time and are collected into a queue of their own. One command is in flight at a
//! time (the protocol has no ids); a command that times out leaves its late reply to be
//! discarded, so the stream stays in step.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::sock::{write_all_before, WriteFailed};

/// The longest qtest line accepted; a longer one is a protocol error.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// IRQ events kept at most; past it the oldest are dropped.
const IRQ_QUEUE: usize = 4096;
/// Replies queued at most (QEMU answers one per command).
const REPLY_QUEUE: usize = 64;

/// Default deadline for one qtest command.
pub const DEFAULT_QTEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An interrupt line changed level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqEvent {
    /// The line number.
    pub line: u32,
    /// Raised (true) or lowered (false).
    pub raised: bool,
}

#[derive(Debug, Default)]
struct Irqs {
    queue: VecDeque<IrqEvent>,
    /// Events dropped from the full queue.
    dropped: u64,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    irqs: Mutex<Irqs>,
    irq_arrived: Notify,
}

impl Shared {
    fn irqs(&self) -> MutexGuard<'_, Irqs> {
        qmp::sync::lock_unpoisoned(&self.irqs)
    }
}

#[derive(Debug)]
struct Session {
    writer: OwnedWriteHalf,
    /// Replies, or (once, last) why the stream could not be read.
    replies: mpsc::Receiver<std::result::Result<String, String>>,
    /// Replies still owed to commands that timed out.
    stale: usize,
}

/// A qtest session (cheap to clone; clones share it).
///
/// ```no_run
/// # async fn f() -> qemu_machine::Result<()> {
/// use qemu_machine::Machine;
///
/// let builder = Machine::builder("qemu-system-x86_64").machine_type("pc").qtest();
/// let mut vm = Machine::new(builder);
/// vm.launch().await?;
/// let qtest = vm.qtest()?;
/// qtest.writel(0x1000, 0xdead_beef).await?;
/// assert_eq!(qtest.readl(0x1000).await?, 0xdead_beef);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// Every command fails with [`ErrorKind::Timeout`] when it gets no reply within its deadline
/// (or another command holds the session that long, or QEMU does not take the line),
/// [`ErrorKind::Io`] when writing to the socket fails, and [`ErrorKind::Qtest`] when the
/// connection closed; the typed commands also fail with [`ErrorKind::Qtest`] on a `FAIL`
/// reply or a reply that makes no sense (and the `clock_*` ones without the qtest
/// accelerator).
#[derive(Debug, Clone)]
pub struct Qtest {
    name: String,
    session: Arc<tokio::sync::Mutex<Session>>,
    shared: Arc<Shared>,
    reader: Arc<JoinHandle<()>>,
    clock_available: bool,
}

impl Qtest {
    /// [`Qtest::open`] over a raw socket. Not part of the API (a
    /// [`Machine`](crate::Machine) starts its qtest session); public only with the feature
    /// `fuzzing`, for this crate's tests.
    ///
    /// # Errors
    ///
    /// As [`Qtest::open`].
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn start(
        name: impl Into<String>,
        stream: std::os::unix::net::UnixStream,
        clock_available: bool,
    ) -> Result<Qtest> {
        Qtest::open(name, stream, clock_available)
    }

    /// Starts a session over our end of the qtest socketpair. `clock_available` says
    /// whether QEMU runs the qtest accelerator (without it `clock_*` are refused).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the stream cannot be set up for tokio (non-blocking, registered
    /// with the runtime).
    pub(crate) fn open(
        name: impl Into<String>,
        stream: std::os::unix::net::UnixStream,
        clock_available: bool,
    ) -> Result<Qtest> {
        let (reader, writer) = crate::sock::split(stream, "qtest")?;
        let shared = Arc::new(Shared {
            irqs: Mutex::new(Irqs::default()),
            irq_arrived: Notify::new(),
        });
        let (replies_tx, replies) = mpsc::channel(REPLY_QUEUE);
        let reader = tokio::spawn(read_lines(reader, shared.clone(), replies_tx));
        Ok(Qtest {
            name: name.into(),
            session: Arc::new(tokio::sync::Mutex::new(Session {
                writer,
                replies,
                stale: 0,
            })),
            shared,
            reader: Arc::new(reader),
            clock_available,
        })
    }

    pub(crate) fn stop(&self) {
        self.reader.abort();
    }

    /// Sends one command line and returns QEMU's reply line (`OK ...` or `FAIL ...`), as is.
    ///
    /// # Errors
    ///
    /// As [the session](Qtest#errors); a `FAIL` reply is returned, not an error.
    pub async fn cmd(&self, command: &str) -> Result<String> {
        self.cmd_timeout(command, DEFAULT_QTEST_TIMEOUT).await
    }

    /// [`cmd`](Self::cmd) with a deadline.
    ///
    /// # Errors
    ///
    /// As [the session](Qtest#errors); a `FAIL` reply is returned, not an error.
    pub async fn cmd_timeout(&self, command: &str, timeout: Duration) -> Result<String> {
        let deadline = crate::deadline::deadline_after(timeout);
        let mut session = tokio::time::timeout_at(deadline, self.session.lock())
            .await
            .map_err(|_| {
                self.timeout(command, timeout, "another qtest command held the session")
            })?;
        let mut line = command.as_bytes().to_vec();
        line.push(b'\n');
        match write_all_before(&session.writer, &line, deadline).await {
            Ok(()) => {}
            Err(WriteFailed::Deadline { .. }) => {
                return Err(self.timeout(command, timeout, "QEMU did not take the command"))
            }
            Err(WriteFailed::Io(e)) => return Err(Error::io("writing to qtest", e)),
        }
        loop {
            match tokio::time::timeout_at(deadline, session.replies.recv()).await {
                Ok(Some(Ok(_))) if session.stale > 0 => session.stale -= 1,
                Ok(Some(Ok(reply))) => return Ok(reply),
                Ok(Some(Err(problem))) => {
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::Qtest {
                            command: command.into(),
                            message: problem,
                        },
                    ))
                }
                Ok(None) => {
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::Qtest {
                            command: command.into(),
                            message: "the qtest connection closed".into(),
                        },
                    ))
                }
                Err(_) => {
                    session.stale += 1;
                    return Err(self.timeout(command, timeout, "no reply"));
                }
            }
        }
    }

    fn timeout(&self, command: &str, after: Duration, seen: &str) -> Error {
        Error::new(
            self.name.clone(),
            ErrorKind::Timeout {
                awaited: format!("the qtest reply to `{command}`"),
                after,
                seen: seen.into(),
            },
        )
    }

    /// Sends a command; `OK` gives what follows it, `FAIL` an error.
    async fn ok(&self, command: &str) -> Result<String> {
        let reply = self.cmd(command).await?;
        match reply.strip_prefix("OK") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(Error::new(
                self.name.clone(),
                ErrorKind::Qtest {
                    command: command.into(),
                    message: reply
                        .strip_prefix("FAIL")
                        .unwrap_or(&reply)
                        .trim()
                        .to_string(),
                },
            )),
        }
    }

    async fn ok_number(&self, command: &str) -> Result<u64> {
        let text = self.ok(command).await?;
        parse_number(&text).ok_or_else(|| {
            Error::new(
                self.name.clone(),
                ErrorKind::Qtest {
                    command: command.into(),
                    message: format!("expected a number, got {text:?}"),
                },
            )
        })
    }

    /// Reads a byte of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn readb(&self, addr: u64) -> Result<u8> {
        Ok(self.ok_number(&format!("readb {addr:#x}")).await? as u8)
    }

    /// Reads 16 bits of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn readw(&self, addr: u64) -> Result<u16> {
        Ok(self.ok_number(&format!("readw {addr:#x}")).await? as u16)
    }

    /// Reads 32 bits of guest memory.
    ///
    /// ```no_run
    /// # async fn f(qtest: &qemu_machine::Qtest) -> qemu_machine::Result<()> {
    /// let value = qtest.readl(0x1000).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn readl(&self, addr: u64) -> Result<u32> {
        Ok(self.ok_number(&format!("readl {addr:#x}")).await? as u32)
    }

    /// Reads 64 bits of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn readq(&self, addr: u64) -> Result<u64> {
        self.ok_number(&format!("readq {addr:#x}")).await
    }

    /// Writes a byte of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn writeb(&self, addr: u64, value: u8) -> Result<()> {
        self.ok(&format!("writeb {addr:#x} {value:#x}"))
            .await
            .map(drop)
    }

    /// Writes 16 bits of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn writew(&self, addr: u64, value: u16) -> Result<()> {
        self.ok(&format!("writew {addr:#x} {value:#x}"))
            .await
            .map(drop)
    }

    /// Writes 32 bits of guest memory.
    ///
    /// ```no_run
    /// # async fn f(qtest: &qemu_machine::Qtest) -> qemu_machine::Result<()> {
    /// qtest.writel(0x1000, 0x1234_5678).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn writel(&self, addr: u64, value: u32) -> Result<()> {
        self.ok(&format!("writel {addr:#x} {value:#x}"))
            .await
            .map(drop)
    }

    /// Writes 64 bits of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn writeq(&self, addr: u64, value: u64) -> Result<()> {
        self.ok(&format!("writeq {addr:#x} {value:#x}"))
            .await
            .map(drop)
    }

    /// Reads `len` bytes of guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let command = format!("read {addr:#x} {len:#x}");
        let text = self.ok(&command).await?;
        let bytes = parse_hex_bytes(&text).ok_or_else(|| {
            Error::new(
                self.name.clone(),
                ErrorKind::Qtest {
                    command: command.clone(),
                    message: format!("expected 0x and hex digits, got {text:?}"),
                },
            )
        })?;
        if bytes.len() != len {
            return Err(Error::new(
                self.name.clone(),
                ErrorKind::Qtest {
                    command,
                    message: format!("asked for {len} bytes, got {}", bytes.len()),
                },
            ));
        }
        Ok(bytes)
    }

    /// Writes `data` to guest memory.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        self.ok(&format!("write {addr:#x} {:#x} 0x{hex}", data.len()))
            .await
            .map(drop)
    }

    /// Reads an 8-bit I/O port.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn inb(&self, port: u16) -> Result<u8> {
        Ok(self.ok_number(&format!("inb {port:#x}")).await? as u8)
    }

    /// Reads a 16-bit I/O port.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn inw(&self, port: u16) -> Result<u16> {
        Ok(self.ok_number(&format!("inw {port:#x}")).await? as u16)
    }

    /// Reads a 32-bit I/O port.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn inl(&self, port: u16) -> Result<u32> {
        Ok(self.ok_number(&format!("inl {port:#x}")).await? as u32)
    }

    /// Writes an 8-bit I/O port.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn outb(&self, port: u16, value: u8) -> Result<()> {
        self.ok(&format!("outb {port:#x} {value:#x}"))
            .await
            .map(drop)
    }

    /// Writes a 16-bit I/O port.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn outw(&self, port: u16, value: u16) -> Result<()> {
        self.ok(&format!("outw {port:#x} {value:#x}"))
            .await
            .map(drop)
    }

    /// Writes a 32-bit I/O port.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn outl(&self, port: u16, value: u32) -> Result<()> {
        self.ok(&format!("outl {port:#x} {value:#x}"))
            .await
            .map(drop)
    }

    fn need_clock(&self, command: &str) -> Result<()> {
        if self.clock_available {
            return Ok(());
        }
        Err(Error::new(
            self.name.clone(),
            ErrorKind::Qtest {
                command: command.into(),
                message: "the virtual clock can only be driven under the qtest accelerator, \
                      which this QEMU binary does not have (see Probe::qtest_accel)"
                    .into(),
            },
        ))
    }

    /// Advances the virtual clock by `ns` (or to the next timer deadline when `None`);
    /// returns the new clock in ns.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn clock_step(&self, ns: Option<u64>) -> Result<u64> {
        let command = match ns {
            Some(ns) => format!("clock_step {ns}"),
            None => "clock_step".into(),
        };
        self.need_clock(&command)?;
        self.ok_number(&command).await
    }

    /// Sets the virtual clock to `ns`; returns the new clock in ns.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn clock_set(&self, ns: u64) -> Result<u64> {
        let command = format!("clock_set {ns}");
        self.need_clock(&command)?;
        self.ok_number(&command).await
    }

    /// Reports the GPIO inputs of the device at `qom_path` as IRQ events instead of
    /// delivering them.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn irq_intercept_in(&self, qom_path: &str) -> Result<()> {
        self.ok(&format!("irq_intercept_in {qom_path}"))
            .await
            .map(drop)
    }

    /// Reports the GPIO outputs of the device at `qom_path` as IRQ events.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn irq_intercept_out(&self, qom_path: &str) -> Result<()> {
        self.ok(&format!("irq_intercept_out {qom_path}"))
            .await
            .map(drop)
    }

    /// Sets GPIO input `num` of `name` (`None`: the unnamed inputs) of the device at
    /// `qom_path` to `level`.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn set_irq_in(
        &self,
        qom_path: &str,
        name: Option<&str>,
        num: u32,
        level: i32,
    ) -> Result<()> {
        let name = name.unwrap_or("unnamed-gpio-in");
        self.ok(&format!("set_irq_in {qom_path} {name} {num} {level}"))
            .await
            .map(drop)
    }

    /// The next IRQ event, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// See [the session](Qtest#errors).
    pub async fn next_irq(&self, timeout: Duration) -> Result<IrqEvent> {
        let deadline = crate::deadline::deadline_after(timeout);
        loop {
            let arrived = self.shared.irq_arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut irqs = self.shared.irqs();
                if let Some(event) = irqs.queue.pop_front() {
                    return Ok(event);
                }
                if irqs.closed {
                    return Err(Error::new(
                        self.name.clone(),
                        ErrorKind::Qtest {
                            command: "(waiting for an IRQ)".into(),
                            message: "the qtest connection closed".into(),
                        },
                    ));
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(Error::new(
                    self.name.clone(),
                    ErrorKind::Timeout {
                        awaited: "an IRQ event from qtest".into(),
                        after: timeout,
                        seen: "none".into(),
                    },
                ));
            }
        }
    }

    /// Every IRQ event queued now, oldest first.
    pub fn irqs(&self) -> Vec<IrqEvent> {
        self.shared.irqs().queue.drain(..).collect()
    }
}

async fn read_lines(
    stream: OwnedReadHalf,
    shared: Arc<Shared>,
    replies: mpsc::Sender<std::result::Result<String, String>>,
) {
    use tokio::io::AsyncReadExt;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(0) => break,
            Ok(_) if line.len() > MAX_LINE => {
                let problem = format!(
                    "protocol error: QEMU sent a qtest line longer than {} MiB",
                    MAX_LINE >> 20
                );
                tracing::warn!("{problem}");
                let _ = replies.send(Err(problem)).await;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = replies
                    .send(Err(format!("protocol error: reading qtest: {e}")))
                    .await;
                break;
            }
        }
        let text = line.trim_end();
        if let Some(event) = parse_irq(text) {
            let mut irqs = shared.irqs();
            if irqs.queue.len() >= IRQ_QUEUE {
                irqs.queue.pop_front();
                irqs.dropped += 1;
                if irqs.dropped.is_power_of_two() {
                    tracing::warn!(
                        "the qtest IRQ queue is full ({IRQ_QUEUE} events nobody took): {} oldest dropped so far",
                        irqs.dropped
                    );
                }
            }
            irqs.queue.push_back(event);
            drop(irqs);
            shared.irq_arrived.notify_waiters();
        } else if replies.send(Ok(text.to_string())).await.is_err() {
            break;
        }
    }
    shared.irqs().closed = true;
    shared.irq_arrived.notify_waiters();
}

// The reply parsers are public only with the feature `fuzzing`, for the fuzz target and the
// property tests that drive them directly.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use reply::{parse_hex_bytes, parse_irq, parse_number};
#[cfg(not(feature = "fuzzing"))]
use reply::{parse_hex_bytes, parse_irq, parse_number};

mod reply;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        assert_eq!(parse_number("0x00000000deadbeef"), Some(0xdead_beef));
        assert_eq!(parse_number("5000000000"), Some(5_000_000_000));
        assert_eq!(parse_number("nonsense"), None);
        assert_eq!(parse_hex_bytes("0x01020304"), Some(vec![1, 2, 3, 4]));
        assert_eq!(parse_hex_bytes("0x123"), None);
        assert_eq!(parse_hex_bytes("0xzz"), None);
        assert_eq!(
            parse_irq("IRQ raise 8"),
            Some(IrqEvent {
                line: 8,
                raised: true
            })
        );
        assert_eq!(
            parse_irq("IRQ lower 14"),
            Some(IrqEvent {
                line: 14,
                raised: false
            })
        );
        assert_eq!(parse_irq("IRQ sideways 1"), None);
    }
}
