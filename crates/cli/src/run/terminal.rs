//! `run`'s terminal connected to the guest's serial console: its output to our stdout, our
//! stdin to the guest (through the escape key's filter), until the user detaches, the
//! console closes, our stdout goes away or a signal comes.

use std::io::Read;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::signals::{Caught, Signals};
use crate::term::{clear_spinner, console_wrote, status};

use super::escape::{filter_input, Stop};

/// How many chunks of typed input may wait for the guest before more is dropped.
const INPUT_QUEUE: usize = 64;
/// At most one "input dropped" status line per this long.
const DROP_NOTICE_EVERY: Duration = Duration::from_secs(2);

/// How the console output ended.
pub(super) enum OutputEnd {
    /// The console closed: QEMU is exiting.
    ConsoleClosed,
    /// Our stdout is gone (EPIPE, EIO): nobody sees the console any more.
    OutputGone,
}

/// Why the console loop of [`connect`] ended.
pub(super) enum Ending {
    /// Ctrl-] q (graceful) or k (immediate), or stdin closed (graceful).
    Detached(Stop),
    /// The console closed: QEMU is exiting by itself.
    Exited,
    /// Our stdout is gone: nobody sees the console any more; a graceful stop.
    OutputGone,
    /// A signal: a graceful stop, and exit with 128 + its number.
    Signal(Caught),
}

/// Connects the terminal to `console` until the session ends, and says why it did. The
/// console's output keeps going to stdout after that (the guest's last words): its task is
/// returned, and ends when the console closes.
pub(super) async fn connect(
    console: &qemu_machine::Console,
    signals: &mut Signals,
) -> (Ending, JoinHandle<OutputEnd>) {
    let output = console.clone();
    let mut console_output = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Ok(bytes) = output.read().await {
            // A spinner redraws its line: it goes before the guest writes one.
            clear_spinner();
            // Recorded before the write: a status line racing with it then starts a line
            // of its own rather than being appended to the guest's.
            console_wrote(&bytes);
            if stdout.write_all(&bytes).await.is_err() || stdout.flush().await.is_err() {
                return OutputEnd::OutputGone;
            }
        }
        OutputEnd::ConsoleClosed
    });
    let (typed, mut input) = mpsc::channel::<Vec<u8>>(16);
    // Blocking reads of stdin on a thread of their own; it ends with the process.
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if typed.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    // Input goes to the guest through a bounded queue and a writer of its own, so a guest
    // that stops reading can never hold up the escape key: when the queue is full, input
    // is dropped (and said so).
    let (to_guest, mut guest_input) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
    let writer_console = console.clone();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = guest_input.recv().await {
            if let Err(e) = writer_console.write(&bytes).await {
                let message = format!("qemu-machine: {e}");
                status(&message, || json!({"status": "error", "message": message}));
            }
        }
    });

    let mut escape_pending = false;
    let mut dropped = 0usize;
    let mut last_notice: Option<std::time::Instant> = None;
    let ending = loop {
        tokio::select! {
            bytes = input.recv() => {
                let Some(bytes) = bytes else { break Ending::Detached(Stop::Graceful) };
                let (forward, detach) = filter_input(&bytes, &mut escape_pending);
                if !forward.is_empty() {
                    if let Err(mpsc::error::TrySendError::Full(lost)) = to_guest.try_send(forward) {
                        dropped += lost.len();
                        if last_notice.is_none_or(|t| t.elapsed() >= DROP_NOTICE_EVERY) {
                            last_notice = Some(std::time::Instant::now());
                            status(
                                &format!("qemu-machine: guest is not reading its console; {dropped} bytes of input dropped"),
                                || json!({"status": "input-dropped", "bytes": dropped}),
                            );
                        }
                    }
                }
                if let Some(stop) = detach {
                    break Ending::Detached(stop);
                }
            }
            end = &mut console_output => break match end {
                Ok(OutputEnd::OutputGone) => Ending::OutputGone,
                _ => Ending::Exited,
            },
            caught = signals.recv() => break Ending::Signal(caught),
        }
    };
    writer.abort();
    clear_spinner();
    (ending, console_output)
}
