//! The terminal: raw mode for `run`, restored however we leave, and the status lines and
//! spinners written on stderr around a command's own output.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};

/// Puts stdin's terminal in raw mode until dropped (then restores it exactly).
pub(crate) struct RawMode {
    /// The settings to restore.
    saved: Termios,
}

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
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// A line for stderr that reads right whether or not the terminal is raw.
pub(crate) fn status_line(text: &str) {
    eprint!("\r{text}\r\n");
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
