//! The terminal: raw mode for `run`, restored however we leave (a drop, a signal, a panic),
//! and the status lines and spinners written on stderr around a command's own output.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
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

/// A line for stderr that reads right whether or not the terminal is raw. Text from QEMU,
/// the guest or a peer is [sanitized](sanitize) first; a stderr that is gone is ignored.
pub(crate) fn status_line(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r{}\r\n", sanitize(text));
    let _ = stderr.flush();
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

/// Awaits `work` with a spinner saying `what` on stderr, only when stderr is a terminal;
/// the spinner is cleared before the result is returned.
pub(crate) async fn with_spinner<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner().with_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    });
    let result = work.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
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
