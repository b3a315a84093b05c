//! The waits people watch: `migrate` (bytes sent of the guest's RAM) and `job` (a block
//! job's offset of its length). Each polls QEMU under one deadline, shows a progress bar on
//! a terminal only (nothing on stderr otherwise), and prints the outcome as JSON.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use qmp::{Client, EventFilter};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::args::{seconds, JobArgs, MigrateArgs};
use crate::failure::{Failure, Outcome};
use crate::output::print_json;
use crate::term::sanitize;
use crate::tools::connect;

/// How often QEMU is asked for progress.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The longest the connection and each command may take, within the whole deadline.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How far past the deadline a progress query may be answered: the deadline is then
/// reported with what that answer says (a query cut at the deadline would say nothing).
const POLL_GRACE: Duration = Duration::from_secs(5);

/// How long `migrate_cancel` may take once the deadline has passed.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// `name` with `arguments`, its answer cut off at `deadline` (the whole wait's).
async fn ask(
    client: &Client,
    name: &str,
    arguments: Value,
    deadline: Instant,
) -> Result<Value, Failure> {
    match tokio::time::timeout_at(deadline, client.execute(name, arguments)).await {
        Ok(answer) => answer.map_err(Failure::command),
        Err(_) => Err(Failure::with_status(
            format!("QEMU did not answer {name} before the deadline"),
            124,
        )),
    }
}

/// `qemu-machine migrate`: starts a migration to `URI` and waits for it to complete.
pub(crate) async fn migrate(args: MigrateArgs) -> Outcome {
    let timeout = seconds(args.timeout, "--timeout")?;
    // `seconds` caps it at LONGEST_TIMEOUT, which an Instant can hold (tested in args).
    let deadline = Instant::now() + timeout;
    let client = connect(&args.address, Some(timeout.min(COMMAND_TIMEOUT))).await?;
    ask(&client, "migrate", json!({ "uri": args.uri }), deadline).await?;
    let bar = Bar::new("migrating");
    loop {
        let info = ask(&client, "query-migrate", Value::Null, deadline + POLL_GRACE).await?;
        let status = info["status"].as_str().unwrap_or("unknown");
        match status {
            "completed" => {
                bar.finish();
                print_json(&info, false);
                return Ok(0);
            }
            "failed" | "cancelled" => {
                bar.finish();
                let why = info["error-desc"].as_str().unwrap_or("no reason given");
                return Err(Failure::new(format!(
                    "migration {status}: {}",
                    sanitize(why)
                )));
            }
            _ => {}
        }
        let (sent, total) = (
            info["ram"]["transferred"].as_u64().unwrap_or(0),
            info["ram"]["total"].as_u64().unwrap_or(0),
        );
        bar.update(status, sent, total);
        if Instant::now() >= deadline {
            bar.finish();
            // Left running, the migration would go on without anyone waiting for it.
            let cancel = client.execute("migrate_cancel", Value::Null);
            let cancelled = matches!(
                tokio::time::timeout(CANCEL_TIMEOUT, cancel).await,
                Ok(Ok(_))
            );
            return Err(Failure::with_status(
                format!(
                    "migration not completed after {} s (status {status}, {sent} of {total} \
                     bytes of RAM sent); {}",
                    timeout.as_secs_f64(),
                    if cancelled {
                        "it was cancelled"
                    } else {
                        "cancelling it failed"
                    }
                ),
                124,
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `qemu-machine job`: waits for a block job to end (or, with `--ready`, to be ready).
pub(crate) async fn job(args: JobArgs) -> Outcome {
    let timeout = seconds(args.timeout, "--timeout")?;
    // `seconds` caps it at LONGEST_TIMEOUT, which an Instant can hold (tested in args).
    let deadline = Instant::now() + timeout;
    let client = connect(&args.address, Some(timeout.min(COMMAND_TIMEOUT))).await?;
    // Subscribed before the first look, so the end of the job cannot slip between the two.
    let mut events = client.subscribe(EventFilter::names([
        "BLOCK_JOB_COMPLETED",
        "BLOCK_JOB_CANCELLED",
        "BLOCK_JOB_READY",
    ]));
    let id = match args.id {
        Some(id) => id,
        None => only_job(&client, deadline).await?,
    };
    let bar = Bar::new(&id);
    loop {
        if let Some(outcome) = how_it_ended(&mut events, &id, args.ready) {
            bar.finish();
            return outcome;
        }
        let jobs = ask(
            &client,
            "query-block-jobs",
            Value::Null,
            deadline + POLL_GRACE,
        )
        .await?;
        let Some(job) = find(&jobs, &id) else {
            bar.finish();
            // QEMU sends the job's last event before the reply that no longer lists it.
            if let Some(outcome) = how_it_ended(&mut events, &id, args.ready) {
                return outcome;
            }
            // It ended before we subscribed: how, QEMU no longer says.
            print_json(&json!({ "device": id, "status": "gone" }), false);
            return Ok(0);
        };
        if args.ready && job["ready"] == true {
            bar.finish();
            print_json(job, false);
            return Ok(0);
        }
        let status = job["status"].as_str().unwrap_or("running");
        let (offset, len) = (
            job["offset"].as_u64().unwrap_or(0),
            job["len"].as_u64().unwrap_or(0),
        );
        bar.update(status, offset, len);
        if Instant::now() >= deadline {
            bar.finish();
            return Err(Failure::with_status(
                format!(
                    "block job {id} not {} after {} s (status {status}, {offset} of {len} \
                     bytes); it goes on",
                    if args.ready { "ready" } else { "done" },
                    timeout.as_secs_f64()
                ),
                124,
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The outcome, when the events received say job `id` ended (or, with `ready`, is ready).
fn how_it_ended(events: &mut qmp::Subscription, id: &str, ready: bool) -> Option<Outcome> {
    for event in events.drain() {
        let data = event.data();
        if data["device"].as_str() != Some(id) {
            continue;
        }
        match event.name() {
            "BLOCK_JOB_COMPLETED" => {
                if let Some(error) = data["error"].as_str() {
                    return Some(Err(Failure::new(format!(
                        "block job {id} failed: {}",
                        sanitize(error)
                    ))));
                }
                print_json(&data, false);
                return Some(Ok(0));
            }
            "BLOCK_JOB_CANCELLED" => {
                return Some(Err(Failure::new(format!("block job {id} was cancelled"))))
            }
            _ if ready => {
                print_json(&data, false);
                return Some(Ok(0));
            }
            _ => {}
        }
    }
    None
}

/// The id of the one block job there is; an error naming them when there are none or many.
async fn only_job(client: &Client, deadline: Instant) -> Result<String, Failure> {
    let jobs = ask(client, "query-block-jobs", Value::Null, deadline).await?;
    let ids: Vec<&str> = jobs
        .as_array()
        .map(|jobs| jobs.iter().filter_map(|j| j["device"].as_str()).collect())
        .unwrap_or_default();
    match ids.as_slice() {
        [id] => Ok(id.to_string()),
        [] => Err(Failure::new("no block job is running")),
        many => Err(Failure::with_status(
            format!(
                "{} block jobs are running ({}): name one",
                many.len(),
                sanitize(&many.join(", "))
            ),
            2,
        )),
    }
}

fn find<'a>(jobs: &'a Value, id: &str) -> Option<&'a Value> {
    jobs.as_array()?
        .iter()
        .find(|job| job["device"].as_str() == Some(id))
}

/// A progress bar in bytes on stderr, when stderr is a terminal; nothing otherwise.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(what: &str) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::new(0)
            .with_message(sanitize(what).into_owned())
            .with_prefix("starting");
        let style = ProgressStyle::with_template(
            "{msg} ({prefix}) [{bar:30}] {bytes} of {total_bytes} ({percent}%) {elapsed}",
        )
        .map(|style| style.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        Bar(Some(bar))
    }

    fn update(&self, status: &str, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total.max(done));
            bar.set_position(done);
            bar.set_prefix(sanitize(status).into_owned());
            bar.tick();
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
