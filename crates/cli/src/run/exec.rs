//! `run --exec`: a command typed at the guest's prompt, its output streamed to stdout, and
//! its status the exit status.

use qemu_machine::Machine;
use serde_json::json;

use crate::config::RunOptions;
use crate::failure::{Failure, Outcome};
use crate::signals::Signals;
use crate::term::status;

use super::stop::{killing_on_signal, power_down, report_exit};
use super::warm::Started;
use super::DEFAULT_PROMPT;

/// The status of `--exec` when its deadline passed.
pub(crate) const EXEC_TIMED_OUT: u8 = 124;
/// The status of `--exec` when the guest failed: a kernel panic, QEMU gone.
pub(crate) const EXEC_GUEST_FAILED: u8 = 125;

/// `run --exec`: waits for the prompt, runs `command` with its output streamed to stdout,
/// powers the guest off (the graceful ladder), and returns the command's status (124: the
/// deadline passed; 125: the guest failed; 128 + N: signal N).
#[allow(clippy::too_many_arguments)]
pub(super) async fn exec_in_guest(
    vm: &mut Machine,
    client: &qmp::Client,
    console: &qemu_machine::Console,
    options: &RunOptions,
    command: &str,
    how: Started,
    signals: &mut Signals,
) -> Outcome {
    let prompt = qemu_machine::Pattern::regex(options.prompt.as_deref().unwrap_or(DEFAULT_PROMPT))
        .map_err(|e| Failure::with_status(format!("--prompt: {e}"), 2))?;
    let started = tokio::time::Instant::now();
    let work = async {
        if how != Started::Booted {
            // A restored shell printed its prompt before it was saved: an empty line
            // makes it print one again.
            console.send_line("").await?;
        }
        console
            .expect_any(prompt, ["Kernel panic"], options.exec_timeout)
            .await?;
        let left = options.exec_timeout.saturating_sub(started.elapsed());
        let run_options = qemu_machine::RunOptions::new(left)
            .failure_pattern("Kernel panic")
            .on_output(|text| {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            });
        console.run(command, run_options).await
    };
    let outcome = tokio::select! {
        result = work => Ok(result),
        caught = signals.recv() => Err(caught),
    };
    let code = match &outcome {
        Ok(Ok(done)) => u8::try_from(done.status).unwrap_or(1),
        Ok(Err(e)) => {
            let (code, what) = match e.kind() {
                qemu_machine::ErrorKind::Timeout { .. } => (
                    EXEC_TIMED_OUT,
                    format!(
                        "--exec: timed out after {} s",
                        options.exec_timeout.as_secs_f64()
                    ),
                ),
                _ => (EXEC_GUEST_FAILED, "--exec: the guest failed".to_string()),
            };
            let tail = console_tail(console);
            status(
                &format!("qemu-machine: {what}: {e}\nlast console output:\n{tail}"),
                || json!({"status": "exec-failed", "code": code, "message": e.to_string(), "console": tail}),
            );
            code
        }
        Err(caught) => {
            status(
                &format!(
                    "qemu-machine: {}: shutting the VM down (again to kill it)",
                    caught.name()
                ),
                || json!({"status": "shutting-down", "signal": caught.name()}),
            );
            caught.exit_status()
        }
    };
    let timeout = options.timeout;
    let pid = vm.pid();
    let work = async {
        if vm.is_running() && matches!(how, Started::CacheHit | Started::CacheBuilt) {
            // A cached guest's writes go to overlays: nothing to shut down cleanly.
            vm.shutdown_timeout(timeout).await
        } else if vm.is_running() {
            power_down(vm, client, options.shutdown_timeout, timeout).await
        } else {
            vm.wait(timeout).await
        }
    };
    let (result, killed) = killing_on_signal(work, signals, pid).await;
    if let Err(e) = result {
        if killed.is_none() {
            status(
                &format!("qemu-machine: {e}"),
                || json!({"status": "error", "message": e.to_string()}),
            );
        }
    }
    report_exit(vm);
    Ok(code)
}

/// The last lines of the console, terminal escapes removed.
fn console_tail(console: &qemu_machine::Console) -> String {
    let text = qemu_machine::guest_shell::strip_terminal(&console.history());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
