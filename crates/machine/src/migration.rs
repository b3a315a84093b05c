//! Live migration between two machines, waiting for the result under one deadline.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;

/// How often [`migrate`] asks `query-migrate` for progress between events.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Migrates `source` to `destination` over `uri` (e.g. `unix:/path/mig.sock`).
///
/// The destination must have been launched with `-incoming defer`; this starts its
/// listener (`migrate-incoming`), turns on migration events on the source, sends
/// `migrate`, and waits for `MIGRATION` to say `completed` or `failed`, calling `progress`
/// with each `query-migrate` answer on the way. Afterwards the destination must run
/// (unless the source was paused): that is checked too.
///
/// ```no_run
/// # async fn f(dir: &std::path::Path) -> qemu_machine::Result<()> {
/// use qemu_machine::{migration::migrate, Machine};
/// use std::time::Duration;
///
/// let mut source = Machine::new(Machine::builder("qemu-system-x86_64"));
/// let destination = Machine::builder("qemu-system-x86_64").args(["-incoming", "defer"]);
/// let mut destination = Machine::new(destination);
/// source.launch().await?;
/// destination.launch().await?;
/// let uri = format!("unix:{}", dir.join("mig.sock").display());
/// migrate(&mut source, &mut destination, &uri, Duration::from_secs(60), |progress| {
///     println!("{}", progress["status"]);
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`ErrorKind::Migration`] when the migration fails or the destination does not run
/// afterwards; [`ErrorKind::Timeout`] when it does not finish within `timeout`; otherwise as
/// [`Machine::cmd`] on either machine.
pub async fn migrate(
    source: &mut Machine,
    destination: &mut Machine,
    uri: &str,
    timeout: Duration,
    mut progress: impl FnMut(&Value),
) -> Result<()> {
    let deadline = crate::deadline::deadline_after(timeout);
    let was_running = source.cmd("query-status", Value::Null).await?["running"] == true;
    destination
        .cmd("migrate-incoming", json!({"uri": uri}))
        .await?;
    source
        .cmd(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        )
        .await?;
    source.cmd("migrate", json!({"uri": uri})).await?;
    let fail = |machine: &Machine, message: String| {
        Error::new(machine.name().to_string(), ErrorKind::Migration { message })
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let info = source.cmd("query-migrate", Value::Null).await?;
            return Err(Error::new(
                source.name().to_string(),
                ErrorKind::Timeout {
                    awaited: format!("migration to {uri}"),
                    after: timeout,
                    seen: format!("last query-migrate: {info}"),
                },
            ));
        }
        let status = match source
            .event_wait("MIGRATION", None, left.min(PROGRESS_INTERVAL))
            .await
        {
            Ok(event) => event.data()["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            Err(e) if matches!(e.kind(), ErrorKind::Timeout { .. }) => String::new(),
            Err(e) => return Err(e),
        };
        let info = source.cmd("query-migrate", Value::Null).await?;
        progress(&info);
        let status = if status.is_empty() {
            info["status"].as_str().unwrap_or_default().to_string()
        } else {
            status
        };
        match status.as_str() {
            "completed" => break,
            "failed" | "cancelled" => {
                let why = info["error-desc"].as_str().unwrap_or(&status).to_string();
                return Err(fail(source, format!("migration {status}: {why}")));
            }
            _ => {}
        }
    }
    if was_running {
        let left = deadline.saturating_duration_since(Instant::now());
        let check_until = crate::deadline::deadline_after(left);
        loop {
            let status = destination.cmd("query-status", Value::Null).await?;
            if status["running"] == true {
                break;
            }
            if Instant::now() >= check_until {
                return Err(fail(
                    destination,
                    format!("the destination does not run after migration: {status}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
