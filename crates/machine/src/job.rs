//! Driving a block job to its end, as iotests' `run_job` does: `ready` → `job-complete`,
//! `pending` → `job-finalize` (or `job-cancel`), `concluded` → `job-dismiss`, errors
//! surfaced, all under one deadline. [`run_job_logged`] also writes the golden log iotests'
//! `run_job(..., use_log=True)` writes.

use std::time::Duration;

use qmp::Event;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;
use crate::qmp_log::QmpLog;

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
/// The job's events (`JOB_STATUS_CHANGE`, `BLOCK_JOB_*`) are consumed, but stay
/// inspectable afterwards in [`Machine::event_history`]; [`run_job_logged`] also returns
/// them.
///
/// ```no_run
/// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
/// use qemu_machine::job::{run_job, JobOptions};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let mirror = json!({"job-id": "job0", "device": "src", "target": "dst", "sync": "full"});
/// vm.cmd("blockdev-mirror", mirror).await?;
/// let statuses = run_job(vm, "job0", JobOptions::default(), Duration::from_secs(30)).await?;
/// assert_eq!(statuses.last().map(String::as_str), Some("null"));
/// let completed = vm.event_history().iter().any(|e| e.name() == "BLOCK_JOB_COMPLETED");
/// # Ok(()) }
/// ```
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
    let events = drive(vm, id, options, timeout, None).await?;
    Ok(statuses(&events))
}

/// [`run_job`], writing into `log` what iotests' `run_job(..., use_log=True)` writes: each
/// command it sends (`job-complete`, `job-finalize`, `job-cancel`, `job-dismiss`) and its
/// reply, each `BLOCK_JOB_*` event of the job, and `Job failed: <message>` when the job
/// aborts, in the order they happen, through `log`'s filters. As in iotests,
/// `JOB_STATUS_CHANGE` events are not logged. Returns all the job's events in the order
/// received, `JOB_STATUS_CHANGE` included.
///
/// ```no_run
/// # async fn f(vm: &mut qemu_machine::Machine, dir: &std::path::Path) -> qemu_machine::Result<()> {
/// use qemu_machine::job::{run_job_logged, JobOptions};
/// use qemu_machine::qmp_log::{filter_test_paths, filter_timestamps, QmpLog};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let mut log = QmpLog::new().with_filter(filter_timestamps).with_filter(filter_test_paths(dir));
/// let mirror = json!({"job-id": "job0", "device": "src", "target": "dst", "sync": "full"});
/// log.execute(vm, "blockdev-mirror", mirror).await?;
/// let t = Duration::from_secs(30);
/// let events = run_job_logged(vm, "job0", JobOptions::default(), t, &mut log).await?;
/// print!("{}", log.text());
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`run_job`].
pub async fn run_job_logged(
    vm: &mut Machine,
    id: &str,
    options: JobOptions,
    timeout: Duration,
    log: &mut QmpLog,
) -> Result<Vec<Event>> {
    drive(vm, id, options, timeout, Some(log)).await
}

/// Sends `name` for job `id`, logging command and reply when there is a log.
async fn job_cmd(
    vm: &mut Machine,
    log: &mut Option<&mut QmpLog>,
    name: &str,
    id: &str,
) -> Result<()> {
    let arguments = json!({"id": id});
    match log {
        Some(log) => drop(log.execute(vm, name, arguments).await?),
        None => drop(vm.cmd(name, arguments).await?),
    }
    Ok(())
}

async fn drive(
    vm: &mut Machine,
    id: &str,
    options: JobOptions,
    timeout: Duration,
    mut log: Option<&mut QmpLog>,
) -> Result<Vec<Event>> {
    let deadline = crate::deadline::deadline_after(timeout);
    let by_id = Some(json!({"data": {"id": id}}));
    let by_device = Some(json!({"data": {"device": id}}));
    let mut events: Vec<Event> = Vec::new();
    let mut error: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = vm
            .events_wait(
                &[
                    ("JOB_STATUS_CHANGE", by_id.clone()),
                    ("BLOCK_JOB_ERROR", by_device.clone()),
                    ("BLOCK_JOB_COMPLETED", by_device.clone()),
                    ("BLOCK_JOB_CANCELLED", by_device.clone()),
                    ("BLOCK_JOB_READY", by_device.clone()),
                    ("BLOCK_JOB_PENDING", by_id.clone()),
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
                        seen: format!("statuses so far: {}", statuses(&events).join(" → ")),
                    },
                ),
                _ => e,
            })?;
        events.push(event.clone());
        let data = event.data();
        match event.name() {
            "JOB_STATUS_CHANGE" => {}
            other => {
                if let Some(log) = log.as_deref_mut() {
                    log.log(&event.to_json());
                }
                if other == "BLOCK_JOB_ERROR" {
                    error.get_or_insert_with(|| {
                        format!("{} error, action {}", data["operation"], data["action"])
                    });
                } else if other == "BLOCK_JOB_COMPLETED" {
                    if let Some(message) = data["error"].as_str() {
                        error.get_or_insert_with(|| message.to_string());
                    }
                }
                continue;
            }
        }
        let status = data["status"].as_str().unwrap_or_default();
        match status {
            "ready" if options.cancel => job_cmd(vm, &mut log, "job-cancel", id).await?,
            "ready" => job_cmd(vm, &mut log, "job-complete", id).await?,
            "pending" if !options.auto_finalize && options.cancel => {
                job_cmd(vm, &mut log, "job-cancel", id).await?
            }
            "pending" if !options.auto_finalize => {
                job_cmd(vm, &mut log, "job-finalize", id).await?
            }
            "aborting" | "concluded" => {
                let failed = job_error(vm, id).await?;
                if let (Some(message), "aborting", Some(log)) =
                    (&failed, status, log.as_deref_mut())
                {
                    log.log_line(&format!("Job failed: {message}"));
                }
                // A job we cancelled reports "Operation canceled": that is what was asked.
                if let Some(message) = failed.filter(|_| !options.cancel) {
                    error.get_or_insert(message);
                }
                if status == "concluded" && !options.auto_dismiss {
                    job_cmd(vm, &mut log, "job-dismiss", id).await?;
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
                    None => Ok(events),
                }
            }
            _ => {}
        }
    }
}

fn statuses(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.name() == "JOB_STATUS_CHANGE")
        .map(|e| e.data()["status"].as_str().unwrap_or_default().to_string())
        .collect()
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
