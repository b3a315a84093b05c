//! Driving a block job to its end, as iotests' `run_job` does: `ready` → `job-complete`,
//! `pending` → `job-finalize` (or `job-cancel`), `concluded` → `job-dismiss`, errors
//! surfaced, all under one deadline.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;

/// How [`run_job`] treats a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobOptions {
    /// The job was started with `auto-finalize` (QEMU's default): do not finalize it.
    pub auto_finalize: bool,
    /// The job was started with `auto-dismiss` (QEMU's default): do not dismiss it.
    pub auto_dismiss: bool,
    /// Cancel instead of completing (at `ready`) or finalizing (at `pending`).
    pub cancel: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            auto_finalize: true,
            auto_dismiss: true,
            cancel: false,
        }
    }
}

/// Follows job `id` through its `JOB_STATUS_CHANGE` events until it is gone (`null`),
/// doing what each state needs. Returns the statuses seen; a job that ends with an error
/// (from `BLOCK_JOB_COMPLETED`, `BLOCK_JOB_ERROR` or `query-jobs`) is an [`ErrorKind::Job`].
///
/// # Errors
///
/// [`ErrorKind::Job`] when the job ends with an error; [`ErrorKind::Timeout`] when it is not
/// gone within `timeout`; otherwise as [`Machine::cmd`] and [`Machine::events_wait`].
pub async fn run_job(
    vm: &mut Machine,
    id: &str,
    options: JobOptions,
    timeout: Duration,
) -> Result<Vec<String>> {
    let deadline = crate::deadline::deadline_after(timeout);
    let by_id = Some(json!({"data": {"id": id}}));
    let by_device = Some(json!({"data": {"device": id}}));
    let mut seen = Vec::new();
    let mut error: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = vm
            .events_wait(
                &[
                    ("JOB_STATUS_CHANGE", by_id.clone()),
                    ("BLOCK_JOB_ERROR", by_device.clone()),
                    ("BLOCK_JOB_COMPLETED", by_device.clone()),
                ],
                left,
            )
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Timeout { after, .. } => Error::new(
                    vm.name(),
                    ErrorKind::Timeout {
                        awaited: format!("job {id} to finish"),
                        after: timeout.max(*after),
                        seen: format!("statuses so far: {}", seen.join(" → ")),
                    },
                ),
                _ => e,
            })?;
        let data = event.data();
        match event.name() {
            "BLOCK_JOB_ERROR" => {
                error.get_or_insert_with(|| {
                    format!("{} error, action {}", data["operation"], data["action"])
                });
                continue;
            }
            "BLOCK_JOB_COMPLETED" => {
                if let Some(message) = data["error"].as_str() {
                    error.get_or_insert_with(|| message.to_string());
                }
                continue;
            }
            _ => {}
        }
        let status = data["status"].as_str().unwrap_or_default().to_string();
        seen.push(status.clone());
        let arguments = json!({"id": id});
        match status.as_str() {
            "ready" if options.cancel => drop(vm.cmd("job-cancel", arguments).await?),
            "ready" => drop(vm.cmd("job-complete", arguments).await?),
            "pending" if !options.auto_finalize && options.cancel => {
                drop(vm.cmd("job-cancel", arguments).await?)
            }
            "pending" if !options.auto_finalize => drop(vm.cmd("job-finalize", arguments).await?),
            "aborting" | "concluded" => {
                // A job we cancelled reports "Operation canceled": that is what was asked.
                if let Some(message) = job_error(vm, id).await?.filter(|_| !options.cancel) {
                    error.get_or_insert(message);
                }
                if status == "concluded" && !options.auto_dismiss {
                    vm.cmd("job-dismiss", arguments).await?;
                }
            }
            "null" => {
                return match error {
                    Some(message) => Err(Error::new(
                        vm.name().to_string(),
                        ErrorKind::Job {
                            job: id.to_string(),
                            message,
                        },
                    )),
                    None => Ok(seen),
                }
            }
            _ => {}
        }
    }
}

async fn job_error(vm: &mut Machine, id: &str) -> Result<Option<String>> {
    let jobs = vm.cmd("query-jobs", Value::Null).await?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|job| job["id"] == id)
        .and_then(|job| job["error"].as_str())
        .map(String::from))
}
