//! Commands in the guest over the serial console, with no agent: any guest with a POSIX
//! shell on its console will do.
//!
//! [`Console::run`] types one line into the guest's shell:
//!
//! ```text
//! printf '__QM_''<token>S\n'; eval '<command>'; printf '\n__QM_''<token>_%d__\n' $?
//! ```
//!
//! The markers are split by quotes, so the shell's echo of that line never matches them:
//! only the shell's *output* does. Everything between the start marker and the end marker
//! is the command's output; the end marker carries its exit status. The echo, carriage
//! returns and terminal escapes (colours, bracketed paste) are removed from what is
//! returned and streamed.

use std::fmt;
use std::time::Duration;

use regex::bytes::Regex;
use tokio::time::Instant;

use crate::console::{Console, Pattern};
use crate::error::{Error, ErrorKind, Result};

/// How long [`Console::run`] waits, after its deadline passed and it sent Ctrl-C, for the
/// shell to answer again.
pub const RESYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the console an error quotes.
const TAIL: usize = 2048;
/// How far back a search resumes, so that a marker or failure pattern split across reads
/// is found.
const RESCAN: usize = 4096;
/// How much console output is kept while waiting for the start marker.
const PRE_START_KEEP: usize = 64 * 1024;
/// Default of [`RunOptions::max_output`].
pub const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;

/// A callback that receives a command's output while it runs.
pub type OutputCallback = Box<dyn FnMut(&str) + Send>;

/// How to run a command with [`Console::run`].
///
/// ```
/// use std::time::Duration;
/// use qemu_machine::guest_shell::RunOptions;
///
/// let options = RunOptions::new(Duration::from_secs(30))
///     .failure_pattern("Kernel panic")
///     .on_output(|text| print!("{text}"));
/// assert_eq!(options.timeout(), Duration::from_secs(30));
/// ```
pub struct RunOptions {
    timeout: Duration,
    failures: Vec<Pattern>,
    on_output: Option<OutputCallback>,
    max_output: usize,
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOptions")
            .field("timeout", &self.timeout)
            .field("failures", &self.failures)
            .field("on_output", &self.on_output.is_some())
            .field("max_output", &self.max_output)
            .finish()
    }
}

impl Default for RunOptions {
    /// A 60 s deadline, `Kernel panic` as the failure pattern, no callback.
    fn default() -> Self {
        RunOptions::new(Duration::from_secs(60)).failure_pattern("Kernel panic")
    }
}

impl RunOptions {
    /// One deadline for the whole command; no failure patterns, no callback.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = qemu_machine::guest_shell::RunOptions::new(Duration::from_secs(5));
    /// assert_eq!(options.timeout(), Duration::from_secs(5));
    /// ```
    pub fn new(timeout: Duration) -> RunOptions {
        RunOptions {
            timeout,
            failures: Vec::new(),
            on_output: None,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// The deadline.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use qemu_machine::guest_shell::RunOptions;
    /// assert_eq!(RunOptions::default().timeout(), Duration::from_secs(60));
    /// ```
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Adds a pattern (e.g. `Kernel panic`) whose appearance in the console ends the wait
    /// at once with an error quoting the console's tail.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use qemu_machine::guest_shell::RunOptions;
    /// let options = RunOptions::new(Duration::from_secs(5)).failure_pattern("Oops");
    /// ```
    pub fn failure_pattern(mut self, pattern: impl Into<Pattern>) -> RunOptions {
        self.failures.push(pattern.into());
        self
    }

    /// How much output [`CommandOutput::output`] keeps (the newest; default
    /// [`DEFAULT_MAX_OUTPUT`]): older output is dropped (and counted in
    /// [`CommandOutput::dropped`]) after it was streamed.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use qemu_machine::guest_shell::RunOptions;
    /// let options = RunOptions::new(Duration::from_secs(5)).max_output(64 * 1024);
    /// ```
    pub fn max_output(mut self, bytes: usize) -> RunOptions {
        self.max_output = bytes;
        self
    }

    /// Calls `callback` with the command's output (cleaned, in whole lines) as it
    /// arrives, before the command ends; a last line without a newline comes at the end
    /// (and may be streamed with a newline the returned output lacks).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use qemu_machine::guest_shell::RunOptions;
    /// let options = RunOptions::new(Duration::from_secs(5)).on_output(|line| eprint!("{line}"));
    /// ```
    pub fn on_output(mut self, callback: impl FnMut(&str) + Send + 'static) -> RunOptions {
        self.on_output = Some(Box::new(callback));
        self
    }
}

/// What a command run by [`Console::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Its exit status (`$?`).
    pub status: i32,
    /// Its output (stdout and stderr as the console shows them), without the echo of the
    /// command line, carriage returns or terminal escapes: the newest
    /// [`RunOptions::max_output`] bytes of it.
    pub output: String,
    /// Console bytes (before cleaning) dropped from the front of the output to stay
    /// within [`RunOptions::max_output`].
    pub dropped: u64,
}

impl CommandOutput {
    /// True when the status is 0.
    ///
    /// ```
    /// # use qemu_machine::guest_shell::CommandOutput;
    /// assert!(CommandOutput { status: 0, output: String::new(), dropped: 0 }.success());
    /// ```
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A fresh marker token: 16 hex digits, unpredictable enough that no output contains it.
fn token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// `text` quoted for a POSIX shell, in single quotes.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Removes terminal escapes (CSI, OSC, two-byte ESC sequences), carriage returns and other
/// control characters except newline and tab.
pub fn strip_terminal(text: &[u8]) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let byte = text[i];
        match byte {
            0x1b => {
                i += 1;
                match text.get(i) {
                    Some(b'[') => {
                        i += 1;
                        while i < text.len() && !(0x40..=0x7e).contains(&text[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(b']') => {
                        // OSC: ends with BEL or ESC \.
                        while i < text.len() && text[i] != 0x07 && text[i] != 0x1b {
                            i += 1;
                        }
                        if text.get(i) == Some(&0x1b) {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(_) => i += 1,
                    None => {}
                }
            }
            b'\n' | b'\t' => {
                out.push(byte);
                i += 1;
            }
            0..=0x1f | 0x7f => i += 1,
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn find(pattern: &Pattern, haystack: &[u8]) -> Option<(usize, usize)> {
    match pattern {
        Pattern::Substring(needle) => {
            memchr::memmem::find(haystack, needle).map(|at| (at, at + needle.len()))
        }
        Pattern::Regex(regex) => regex.find(haystack).map(|m| (m.start(), m.end())),
    }
}

impl Console {
    /// Runs `command` (one line of shell) in the guest's shell on this console and returns
    /// its exit status and output, streaming the output to
    /// [`RunOptions::on_output`] as it arrives. Output that arrived before the call is
    /// skipped. The command runs through `eval` in the current shell, so `cd` and
    /// variables persist; a command that reads its standard input reads the console.
    /// Run one command at a time per console: clones share one cursor.
    ///
    /// On the deadline, Ctrl-C is sent and the shell is resynchronised (at most
    /// [`RESYNC_TIMEOUT`] more): the console is usable afterwards unless the error says
    /// otherwise.
    ///
    /// ```no_run
    /// # async fn f(vm: &qemu_machine::Machine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// use qemu_machine::guest_shell::RunOptions;
    ///
    /// let console = vm.console()?;
    /// let done = console
    ///     .run("uname -a", RunOptions::new(Duration::from_secs(30)).on_output(|t| print!("{t}")))
    ///     .await?;
    /// assert_eq!(done.status, 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when `command` has a newline; [`ErrorKind::Timeout`] (naming the
    /// command, with the console's tail) on the deadline; [`ErrorKind::Console`] when a
    /// failure pattern shows up or the console closes.
    pub async fn run(&self, command: &str, mut options: RunOptions) -> Result<CommandOutput> {
        if command.contains(['\n', '\r']) {
            return Err(Error::config(format!(
                "a console command must be one line: {command:?}"
            )));
        }
        let deadline = crate::deadline::deadline_after(options.timeout);
        let token = token();
        let start_marker = format!("__QM_{token}S");
        let end = Regex::new(&format!(r"\r?\n__QM_{token}_(\d+)__")).map_err(|e| {
            Error::io(
                "building the exit marker's pattern",
                std::io::Error::other(e),
            )
        })?;
        let line = format!(
            "printf '__QM_''{token}S\\n'; eval {}; printf '\\n__QM_''{token}_%d__\\n' $?",
            shell_quote(command)
        );
        // Skip what came before.
        let _ = self.read_available();
        match tokio::time::timeout_at(deadline, self.send_line(&line)).await {
            Ok(sent) => sent?,
            Err(_) => {
                return Err(Error::new(
                    self.machine_name().to_string(),
                    ErrorKind::Timeout {
                        awaited: format!("the console to take the guest command {command:?}"),
                        after: options.timeout,
                        seen: "the console did not take the whole line".into(),
                    },
                ))
            }
        }

        // Before the start marker: the newest console bytes (bounded); after it: the
        // command's output, its front dropped beyond `max_output`.
        let mut raw: Vec<u8> = Vec::new();
        let mut started = false;
        // Output bytes already streamed (always at a line boundary) and already searched.
        let mut streamed = 0usize;
        let mut scanned = 0usize;
        let mut dropped = 0u64;
        let max_output = options.max_output.max(1);
        loop {
            if !started {
                if let Some(at) = memchr::memmem::find(&raw, start_marker.as_bytes()) {
                    // The output starts after the marker's line break (`\r\n` on a tty).
                    let after = at + start_marker.len();
                    if let Some(newline) = memchr::memchr(b'\n', &raw[after..]) {
                        raw.drain(..after + newline + 1);
                        started = true;
                        continue;
                    }
                } else if raw.len() > PRE_START_KEEP {
                    raw.drain(..raw.len() - PRE_START_KEEP);
                }
            } else {
                let from = scanned.saturating_sub(RESCAN);
                for failure in &options.failures {
                    if let Some((s, e)) = find(failure, &raw[from..]) {
                        return Err(Error::new(
                            self.machine_name().to_string(),
                            ErrorKind::Console {
                                problem: format!(
                                    "failure pattern {failure} appeared while running {command:?}: {:?}",
                                    String::from_utf8_lossy(&raw[from + s..from + e])
                                ),
                                last_output: tail(&raw),
                            },
                        ));
                    }
                }
                if let Some(caps) = end.captures(&raw[from..]) {
                    let whole = from + caps.get(0).map_or(raw.len() - from, |m| m.start());
                    let status = caps
                        .get(1)
                        .and_then(|m| std::str::from_utf8(m.as_bytes()).ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .unwrap_or(-1);
                    if let Some(callback) = options.on_output.as_mut() {
                        let rest = strip_terminal(&raw[streamed.min(whole)..whole]);
                        if !rest.is_empty() {
                            callback(&rest);
                        }
                    }
                    return Ok(CommandOutput {
                        status,
                        output: strip_terminal(&raw[..whole]),
                        dropped,
                    });
                }
                scanned = raw.len();
                // Stream whole lines as they come; hold back an empty last line, which
                // may be the end marker's own line break.
                if let Some(last) = memchr::memrchr(b'\n', &raw[streamed..]) {
                    let last = streamed + last;
                    let line_start = memchr::memrchr(b'\n', &raw[streamed..last])
                        .map_or(streamed, |i| streamed + i + 1);
                    let upto = if strip_terminal(&raw[line_start..last]).is_empty() {
                        line_start
                    } else {
                        last + 1
                    };
                    if upto > streamed {
                        if let Some(callback) = options.on_output.as_mut() {
                            callback(&strip_terminal(&raw[streamed..upto]));
                        }
                        streamed = upto;
                    }
                }
                // Bounded: drop the oldest output, at a line boundary when there is one.
                if raw.len() > max_output + RESCAN {
                    let excess = raw.len() - max_output;
                    let mut cut =
                        memchr::memrchr(b'\n', &raw[..excess.min(streamed)]).map_or(0, |i| i + 1);
                    if cut == 0 && raw.len() > 2 * max_output + RESCAN {
                        // One enormous line: stream what goes, then drop it anyway.
                        cut = excess;
                        if cut > streamed {
                            if let Some(callback) = options.on_output.as_mut() {
                                callback(&strip_terminal(&raw[streamed..cut]));
                            }
                            streamed = cut;
                        }
                    }
                    if cut > 0 {
                        raw.drain(..cut);
                        streamed -= cut;
                        scanned = scanned.saturating_sub(cut);
                        dropped += cut as u64;
                    }
                }
            }

            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read()).await {
                Ok(Ok(bytes)) => raw.extend_from_slice(&bytes),
                Ok(Err(e)) => {
                    return Err(Error::new(
                        self.machine_name().to_string(),
                        ErrorKind::Console {
                            problem: format!("while running {command:?}: {e}"),
                            last_output: tail(&raw),
                        },
                    ))
                }
                Err(_) => {
                    let resynced = self.resync().await;
                    return Err(Error::new(
                        self.machine_name().to_string(),
                        ErrorKind::Timeout {
                            awaited: format!("the guest command {command:?} to finish"),
                            after: options.timeout,
                            seen: format!(
                                "{}; last console output: {:?}",
                                if resynced {
                                    "it was interrupted with Ctrl-C and the shell answers again"
                                } else {
                                    "Ctrl-C was sent but the shell did not answer: the console is in an unknown state"
                                },
                                tail(&raw)
                            ),
                        },
                    ));
                }
            }
        }
    }

    /// Sends `command` as a line, then waits for `pattern`, failing at once if one of
    /// `failures` shows up first ([`exec_and_expect`](Self::exec_and_expect) with failure
    /// patterns).
    ///
    /// ```no_run
    /// # async fn f(console: &qemu_machine::Console) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// console
    ///     .exec_and_expect_any("modprobe x; echo DONE", "DONE\n", ["Oops"], Duration::from_secs(9))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write), then as [`expect_any`](Self::expect_any).
    pub async fn exec_and_expect_any<F: Into<Pattern>>(
        &self,
        command: &str,
        pattern: impl Into<Pattern>,
        failures: impl IntoIterator<Item = F>,
        timeout: Duration,
    ) -> Result<crate::console::Match> {
        self.send_line(command).await?;
        self.expect_any(pattern, failures, timeout).await
    }

    /// Sends Ctrl-C, then a fresh marker; true when the shell printed it within
    /// [`RESYNC_TIMEOUT`].
    async fn resync(&self) -> bool {
        let token = token();
        if self.write(b"\x03").await.is_err() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self
            .send_line(&format!("printf '__QM_''{token}R\\n'"))
            .await
            .is_err()
        {
            return false;
        }
        self.expect(format!("__QM_{token}R").as_str(), RESYNC_TIMEOUT)
            .await
            .is_ok()
    }
}

impl crate::blocking::Console {
    /// [`Console::run`], blocking.
    ///
    /// ```no_run
    /// # fn f(vm: &qemu_machine::blocking::Machine) -> qemu_machine::Result<()> {
    /// use std::time::Duration;
    /// let done = vm.console()?.run("true", qemu_machine::RunOptions::new(Duration::from_secs(5)))?;
    /// assert!(done.success());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Console::run`].
    pub fn run(&self, command: &str, options: RunOptions) -> Result<CommandOutput> {
        qmp::blocking::block_on(self.as_async().run(command, options))
            .map_err(|source| Error::from(ErrorKind::Qmp(Box::new(source))))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_and_carriage_returns() {
        let raw = b"\x1b[?2004hline1\r\n\x1b[01;32mgreen\x1b[0m\r\n\x1b]0;title\x07x\x1b[?2004l";
        assert_eq!(strip_terminal(raw), "line1\ngreen\nx");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(), token());
    }
}
