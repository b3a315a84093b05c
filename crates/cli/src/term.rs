//! The terminal: raw mode for `run`, restored however we leave (a drop, a signal, a panic),
//! and the status lines and spinners written on stderr around a command's own output.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

/// The settings raw mode replaced, while it is on: what [`restore_terminal`] puts back,
/// from a drop or from the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts stdin's terminal in raw mode until dropped (then restores it exactly).
pub(crate) struct RawMode(());

impl RawMode {
    /// Raw mode if stdin is a terminal; `None` otherwise.
    pub(crate) fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Saved before the switch: a panic right after it still finds what to restore.
        if let Ok(mut slot) = SAVED.lock() {
            *slot = Some(saved);
        }
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            restore_terminal();
            return None;
        }
        Some(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts back the terminal settings raw mode replaced, if it is on; safe to call from the
/// panic hook (it never blocks on the lock) and more than once.
pub(crate) fn restore_terminal() {
    let saved = match SAVED.try_lock() {
        Ok(mut slot) => slot.take(),
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &saved);
    }
}

/// Whether the last byte the console wrote to the terminal ended a line (or nothing was
/// written yet): a status line then starts right there; otherwise it starts on a fresh
/// line, so that it never overwrites what the guest printed (a prompt, say).
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// Whether `run --json` is on: status lines are then JSON objects, one per line.
static JSON: AtomicBool = AtomicBool::new(false);

/// The spinner on stderr while people wait, if one is showing: a status line clears it
/// first, so the two never garble each other.
static SPINNER: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Records what the console just wrote to stdout: see [`status_line`].
pub(crate) fn console_wrote(bytes: &[u8]) {
    if let Some(&last) = bytes.last() {
        AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
    }
}

/// Makes [`status`] print JSON lines (`run --json`).
pub(crate) fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether [`status`] prints JSON lines.
pub(crate) fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A line for stderr that reads right whether or not the terminal is raw (it ends in
/// `\r\n`), and starts on a line of its own: when the console's output stopped mid-line,
/// `\r\n` comes first, never a bare `\r` that would overwrite the guest's text. Text from
/// QEMU, the guest or a peer is [sanitized](sanitize) first; a stderr that is gone is
/// ignored.
pub(crate) fn status_line(text: &str) {
    write_line(&sanitize(text), "\r\n", true);
}

/// Writes `line` and `end` on stderr, on a line of its own when `fresh` allows (see
/// [`status_line`]).
fn write_line(line: &str, end: &str, fresh: bool) {
    clear_spinner();
    let mut stderr = std::io::stderr().lock();
    let fresh = if AT_LINE_START.swap(true, Ordering::Relaxed) || !fresh {
        ""
    } else {
        "\r\n"
    };
    let _ = write!(stderr, "{fresh}{line}{end}");
    let _ = stderr.flush();
}

/// One status report of `run`: `human` as a [`status_line`], or with `--json` the object
/// `json` on a line (JSON escapes every control character, so it needs no sanitizing). On a
/// terminal it starts a line of its own and ends in `\r\n` (a JSON parser skips the `\r`);
/// elsewhere it is nothing but the object and `\n`.
pub(crate) fn status(human: &str, json: impl FnOnce() -> serde_json::Value) {
    if !self::json() {
        return status_line(human);
    }
    // Not on a terminal, nothing but JSON lines: no fresh-line break before one.
    let terminal = std::io::stderr().is_terminal();
    let end = if terminal { "\r\n" } else { "\n" };
    write_line(&json().to_string(), end, terminal);
}

/// Shows a spinner saying `what` on stderr until [`clear_spinner`] or the next status
/// line; only when stderr is a terminal and `--json` is off.
pub(crate) fn start_spinner(what: &str) {
    if !std::io::stderr().is_terminal() || json() {
        return;
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    if let Ok(mut slot) = SPINNER.lock() {
        if let Some(old) = slot.replace(bar) {
            old.finish_and_clear();
        }
    }
}

/// Removes the spinner of [`start_spinner`], if one is showing.
pub(crate) fn clear_spinner() {
    let bar = SPINNER.lock().ok().and_then(|mut slot| slot.take());
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// Text from outside (QEMU's output, a QMP error, an event) made safe to print on a
/// terminal: newlines and tabs stay, other C0 controls and DEL become `\xNN`, C1 controls
/// (U+0080 to U+009F) become `\u{NN}`, so no escape sequence reaches the terminal.
pub(crate) fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Awaits `work` with a spinner saying `what` on stderr, only when stderr is a terminal
/// (and `--json` is off); the spinner is cleared before the result is returned.
pub(crate) async fn with_spinner<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    start_spinner(what);
    let result = work.await;
    clear_spinner();
    result
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn controls_are_rendered_not_sent() {
        assert_eq!(sanitize("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            sanitize("\x1b]0;pwned\x07\x1b[2J"),
            "\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(sanitize("a\u{9b}31mb\u{7f}\r"), "a\\u{9b}31mb\\x7f\\x0d");
        assert_eq!(sanitize("é ü 日本"), "é ü 日本");
    }
}
