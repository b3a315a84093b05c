//! Bringing the VM down at the end of `run`: the graceful ladder (`system_powerdown`, then
//! `quit`, then SIGKILL), a second signal killing QEMU at once, and how QEMU ended.

use std::future::Future;
use std::time::Duration;

use qemu_machine::Machine;
use qmp::Request;
use serde_json::json;

use crate::signals::{kill_group, Caught, Signals};
use crate::term::{clear_spinner, start_spinner, status};

/// Says how QEMU ended (a status line, or a JSON object with `--json`), and returns it.
pub(super) fn report_exit(vm: &mut Machine) -> Option<std::process::ExitStatus> {
    let exit = vm.exit_status();
    status(
        &format!(
            "qemu-machine: QEMU exited ({})",
            exit.map_or("unknown status".into(), |s| s.to_string())
        ),
        || {
            json!({
                "status": "exited",
                "code": exit.and_then(|s| s.code()),
                "signal": exit.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
            })
        },
    );
    exit
}

/// The graceful rung of the ladder: `system_powerdown`, up to `shutdown_timeout` for the
/// guest to power off (QEMU then exits by itself), then as the immediate stop: `quit`, up
/// to `timeout` for QEMU to exit, then SIGKILL. Every wait is bounded.
pub(super) async fn power_down(
    vm: &mut Machine,
    client: &qmp::Client,
    shutdown_timeout: Duration,
    timeout: Duration,
) -> qemu_machine::Result<()> {
    let secs = shutdown_timeout.as_secs_f64();
    // The command counts against the same deadline as the guest's power-off.
    let deadline = tokio::time::Instant::now().checked_add(shutdown_timeout);
    let asked = if shutdown_timeout.is_zero() {
        Err(None)
    } else {
        client
            .execute_request(Request::new("system_powerdown").timeout(shutdown_timeout))
            .await
            .map_err(Some)
    };
    match asked {
        Ok(_) => {
            status(
                "qemu-machine: asked the guest to power off (system_powerdown)",
                || json!({"status": "powerdown", "timeout": secs}),
            );
            start_spinner(&format!(
                "waiting up to {secs} s for the guest to power off"
            ));
            while vm.is_running() && deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            clear_spinner();
            if !vm.is_running() {
                // It has exited: this only reaps it and tidies up.
                return vm.wait(timeout).await;
            }
            status(
                &format!("qemu-machine: the guest did not power off within {secs} s; sending quit"),
                || json!({"status": "quit", "reason": "shutdown-timeout"}),
            );
        }
        Err(None) => status(
            "qemu-machine: --shutdown-timeout is 0; sending quit",
            || json!({"status": "quit", "reason": "shutdown-timeout"}),
        ),
        Err(Some(e)) => {
            let message = format!("qemu-machine: system_powerdown failed ({e}); sending quit");
            status(
                &message,
                || json!({"status": "quit", "reason": "powerdown-failed", "message": e.to_string()}),
            );
        }
    }
    vm.shutdown_timeout(timeout).await
}

/// Runs `work` (bringing the VM down) to its end; a signal meanwhile kills QEMU's process
/// group at once (the first one only: the kill is already under way), said on stderr.
/// Returns the work's result and the signal, if one came.
pub(super) async fn killing_on_signal<T>(
    work: impl Future<Output = T>,
    signals: &mut Signals,
    pid: Option<u32>,
) -> (T, Option<Caught>) {
    tokio::pin!(work);
    let mut escalated: Option<Caught> = None;
    loop {
        tokio::select! {
            result = &mut work => break (result, escalated),
            caught = signals.recv(), if escalated.is_none() => {
                status(
                    &format!("qemu-machine: {}: killing QEMU", caught.name()),
                    || json!({"status": "killing", "signal": caught.name()}),
                );
                escalated = Some(caught);
                if let Some(pid) = pid {
                    kill_group(pid);
                }
            }
        }
    }
}
