//! `qemu-machine run`: a VM on this terminal.
//!
//! [`run`] launches the VM ([`machine`] says which, [`warm`] how: booted, restored or from
//! the snapshot cache), serves its sockets ([`sockets`]), then either connects this terminal
//! to its console ([`terminal`], with the [`escape`] key) or types one command at its prompt
//! ([`exec`]), and at the end brings it down ([`stop`]). `--dry-run` only prints the command
//! line ([`dry_run`]).

mod dry_run;
mod escape;
mod exec;
mod machine;
mod sockets;
mod stop;
mod terminal;
mod warm;

use std::path::PathBuf;
use std::time::Duration;

use qemu_machine::Machine;
use qmp::{EventFilter, Multiplexer};
use serde_json::json;

use crate::args::RunArgs;
use crate::config::RunOptions;
use crate::failure::{exit_status_code, Failure, Outcome};
use crate::signals::{kill_child_groups, Caught, Signals};
use crate::term::{start_spinner, status, with_spinner, RawMode};

use self::escape::Stop;
use self::sockets::{claim_socket_path, remove_socket, serve_extras};
use self::stop::{killing_on_signal, power_down, report_exit};
use self::terminal::Ending;
use self::warm::{save, Started, WarmOptions};

/// The default `--prompt`: `# ` or `$ ` at the end of the console output so far, then any
/// terminal escapes (busybox sh asks for the cursor position right after its prompt; bash
/// may switch bracketed paste). It matches the test guest's `guest# `, a root
/// `root@host:~# ` on a Debian serial getty with autologin, and a user's `user@host:~$ `.
pub(crate) const DEFAULT_PROMPT: &str = r"[#$] (?:\x1b\[[0-9;?]*[A-Za-z])*$";

/// After a signal during a launch, how long the launch may take to fail on its own (its
/// QEMU killed) before it is dropped.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// `qemu-machine run`: boots the VM, connects this terminal to its serial console until the
/// user detaches or QEMU exits, and exits with QEMU's status.
///
/// SIGTERM, SIGHUP, SIGINT and SIGQUIT shut the VM down gracefully, as Ctrl-] q does (a
/// second one kills it), or abort the launch; then the terminal is restored, the `--qmp`
/// socket and the run dir are removed, and the status is 128 + the signal's number.
pub(crate) async fn run(mut args: RunArgs) -> Outcome {
    // Before anything can fail: with --json, so is the failure.
    crate::term::set_json(args.json);
    // These are about this invocation, not the VM: not in --config files.
    let warm = WarmOptions {
        save_state: args.save_state.take(),
        restore: args.restore.take(),
        cache: args.warm,
    };
    let options = RunOptions::from_args(args)?;
    if options.dry_run {
        print!("{}", dry_run::dry_run_script(&options)?);
        return Ok(0);
    }
    let mut signals = Signals::listen()
        .map_err(|e| Failure::new(format!("cannot install signal handlers: {e}")))?;
    if let Some(path) = &options.qmp {
        claim_socket_path(path, "--qmp")?;
    }
    if let Some(path) = &options.ga {
        claim_socket_path(path, "--ga")?;
    }
    let mut vm = Machine::new(machine::builder(&options));
    if warm.save_state.is_some() || warm.restore.is_some() || warm.cache {
        if let Some(why) = vm.config().migration_blockers().first() {
            return Err(Failure::with_status(
                format!("--save-state, --restore and --warm cannot work here: {why}"),
                2,
            ));
        }
    }
    let started = match launch(&mut vm, &warm, &options, &mut signals).await? {
        Launch::Started(started) => started,
        Launch::Aborted(caught) => return Ok(caught.exit_status()),
    };
    let attached = match attach(&mut vm, &options).await {
        Ok(attached) => attached,
        Err(failure) => {
            // Nothing half-done stays: QEMU goes, and with it the run dir.
            let _ = vm.kill().await;
            return Err(failure);
        }
    };
    match options.exec.clone() {
        Some(command) => {
            say_running(&vm, &options, Some(&command));
            let event_printer = print_events(&attached.client);
            let result = exec::exec_in_guest(
                &mut vm,
                &attached.client,
                &attached.console,
                &options,
                &command,
                started,
                &mut signals,
            )
            .await;
            if tokio::time::timeout(Duration::from_millis(500), event_printer)
                .await
                .is_err()
            {
                // It ends with the connection; bounded all the same.
            }
            attached.close();
            result
        }
        None => interact(&mut vm, attached, &options, &warm, &mut signals).await,
    }
}

/// How a launch that a signal may interrupt ended.
enum Launch {
    /// The VM is running.
    Started(Started),
    /// A signal came first: QEMU is killed, the launch abandoned.
    Aborted(Caught),
}

/// Launches the VM (said on a spinner), as `warm` asks; a signal meanwhile aborts it: its
/// QEMU is killed, and the launch dropped if it does not fail on its own soon.
async fn launch(
    vm: &mut Machine,
    warm: &WarmOptions,
    options: &RunOptions,
    signals: &mut Signals,
) -> Result<Launch, Failure> {
    let cache = match warm.cache {
        true => Some(crate::cache::open(None)?),
        false => None,
    };
    let prompt = qemu_machine::Pattern::regex(options.prompt.as_deref().unwrap_or(DEFAULT_PROMPT))
        .map_err(|e| Failure::with_status(format!("--prompt: {e}"), 2))?;
    let (launched, aborted) = with_spinner("starting QEMU", async {
        let launch = warm::start(vm, warm, cache.as_ref(), prompt, options);
        tokio::pin!(launch);
        let mut aborted: Option<(Caught, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                result = &mut launch => break (Some(result), aborted.map(|(caught, _)| caught)),
                caught = signals.recv(), if aborted.is_none() => {
                    aborted = Some((caught, tokio::time::Instant::now()));
                    kill_child_groups();
                }
                // QEMU may not be spawned yet when the signal comes: keep at it.
                _ = tokio::time::sleep(Duration::from_millis(20)), if aborted.is_some() => {
                    kill_child_groups();
                    // Nothing to kill (waiting for the snapshot cache's lock, hashing its
                    // inputs): the launch is dropped instead, which is cancel-safe.
                    if aborted.is_some_and(|(_, at)| at.elapsed() >= ABORT_GRACE) {
                        break (None, aborted.map(|(caught, _)| caught));
                    }
                }
            }
        }
    })
    .await;
    if let Some(caught) = aborted {
        let _ = vm.kill().await;
        status(
            &format!("qemu-machine: {}: launch aborted", caught.name()),
            || json!({"status": "aborted", "signal": caught.name()}),
        );
        return Ok(Launch::Aborted(caught));
    }
    let Some(launched) = launched else {
        return Err(Failure::new("the launch ended without a result"));
    };
    let started = launched?;
    started.report(warm, cache.as_ref());
    Ok(Launch::Started(started))
}

/// What `run` talks to a launched VM through.
struct Attached {
    /// Its QMP client.
    client: qmp::Client,
    /// The `--qmp` multiplexer; its socket file goes with it.
    mux: Option<Multiplexer>,
    /// Its serial console.
    console: qemu_machine::Console,
    /// The `--ga` socket served.
    ga: Option<PathBuf>,
}

impl Attached {
    /// Removes the `--qmp` and `--ga` sockets.
    fn close(self) {
        drop(self.mux);
        remove_socket(self.ga.as_deref());
    }
}

/// Connects to a launched VM: its QMP client, the `--qmp` multiplexer, the console, and the
/// `--ga` socket (with the `--net` forwards said).
async fn attach(vm: &mut Machine, options: &RunOptions) -> Result<Attached, Failure> {
    let client = vm
        .qmp_client()
        .ok_or_else(|| Failure::new("the VM has no QMP monitor"))?;
    let mux = match &options.qmp {
        Some(path) => Some(Multiplexer::serve(client.clone(), path)?),
        None => None,
    };
    let console = vm.console()?;
    let ga = serve_extras(vm, options).await?;
    Ok(Attached {
        client,
        mux,
        console,
        ga,
    })
}

/// Says the VM runs, and what comes next: the command (`--exec`), or the console.
fn say_running(vm: &Machine, options: &RunOptions, exec: Option<&str>) {
    let pid = vm.pid();
    let next = match exec {
        Some(_) => "waiting for its shell prompt to run the command",
        None => "Ctrl-] then q shuts it down, Ctrl-] then k stops it at once",
    };
    status(
        &format!(
            "qemu-machine: VM running (pid {}){}; {next}",
            pid.unwrap_or(0),
            options
                .qmp
                .as_ref()
                .map(|p| format!(", QMP at {}", p.display()))
                .unwrap_or_default(),
        ),
        || {
            let mut said = json!({"status": "launched", "pid": pid, "qmp": options.qmp});
            if let Some(command) = exec {
                said["exec"] = json!(command);
            }
            said
        },
    );
}

/// The console on this terminal until the session ends, then the VM brought down as the
/// ending asks (its state saved first if the user detached with `--save-state`); returns
/// QEMU's exit status, or 128 + a signal's number.
async fn interact(
    vm: &mut Machine,
    attached: Attached,
    options: &RunOptions,
    warm: &WarmOptions,
    signals: &mut Signals,
) -> Outcome {
    say_running(vm, options, None);
    let pid = vm.pid();
    let raw = RawMode::enter();
    // People wait here for the guest's first words: a spinner until then (terminals only).
    start_spinner("booting");
    let mut event_printer = print_events(&attached.client);
    let (ending, mut console_output) = terminal::connect(&attached.console, signals).await;
    if let Ending::Signal(caught) = ending {
        status(
            &format!(
                "qemu-machine: {}: shutting the VM down (again to kill it)",
                caught.name()
            ),
            || json!({"status": "shutting-down", "signal": caught.name()}),
        );
    }
    let stop = match ending {
        Ending::Exited => None,
        Ending::Detached(stop) => Some(stop),
        Ending::OutputGone | Ending::Signal(_) => Some(Stop::Graceful),
    };
    let save_to = match ending {
        Ending::Detached(_) => warm.save_state.as_deref(),
        _ => None,
    };
    let ((result, save_failed), escalated) = killing_on_signal(
        bring_down(vm, &attached.client, options, save_to, stop),
        signals,
        pid,
    )
    .await;
    // The guest's last words (before it powered off) may still be on their way to our
    // stdout: the console output ends when QEMU's console closes, which it has by now;
    // bounded all the same.
    if matches!(ending, Ending::Detached(_) | Ending::Signal(_)) {
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut console_output).await;
    }
    // The last events (SHUTDOWN) are still on their way to the printer: it ends when the
    // connection does, which it has by now; bounded all the same.
    if tokio::time::timeout(Duration::from_millis(500), &mut event_printer)
        .await
        .is_err()
    {
        event_printer.abort();
    }
    drop(raw);
    attached.close();
    match result {
        // The SIGKILL we sent is reported as unexpected by the library: it was asked for.
        Err(_) if escalated.is_some() => {}
        other => other?,
    }
    let exit = report_exit(vm);
    if let Some(kept) = vm.kept_run_dir() {
        status(
            &format!("qemu-machine: run dir kept at {}", kept.display()),
            || json!({"status": "run-dir-kept", "path": kept}),
        );
    }
    if let Some(caught) = escalated.or(match ending {
        Ending::Signal(caught) => Some(caught),
        _ => None,
    }) {
        return Ok(caught.exit_status());
    }
    if save_failed {
        return Ok(1);
    }
    if let (Some(path), false) = (&warm.save_state, matches!(ending, Ending::Detached(_))) {
        status(
            &format!(
                "qemu-machine: no state saved to {}: the VM exited by itself or stdout went away (only detaching saves)",
                path.display()
            ),
            || json!({"status": "not-saved", "path": path}),
        );
    }
    Ok(exit.map_or(1, |status| {
        exit_status_code(
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        )
    }))
}

/// Brings the VM down after its console session: saves its state to `save_to` first (then
/// stops it at once, saved or not), or stops it as `stop` says (`None`: it is exiting by
/// itself, waited for). Returns the result, and whether saving failed.
async fn bring_down(
    vm: &mut Machine,
    client: &qmp::Client,
    options: &RunOptions,
    save_to: Option<&std::path::Path>,
    stop: Option<Stop>,
) -> (qemu_machine::Result<()>, bool) {
    let timeout = options.timeout;
    if let Some(path) = save_to {
        let save_failed = match save(vm, path, timeout).await {
            Ok(()) => false,
            Err(e) => {
                status(
                    &format!("qemu-machine: could not save the state: {e}; stopping the VM"),
                    || json!({"status": "save-failed", "message": e.to_string()}),
                );
                true
            }
        };
        return (vm.shutdown_timeout(timeout).await, save_failed);
    }
    let result = match stop {
        None => vm.wait(timeout).await,
        Some(Stop::Immediate) => vm.shutdown_timeout(timeout).await,
        Some(Stop::Graceful) => power_down(vm, client, options.shutdown_timeout, timeout).await,
    };
    (result, false)
}

/// Prints QMP events on stderr (status lines) until the QMP session ends.
fn print_events(client: &qmp::Client) -> tokio::task::JoinHandle<()> {
    let mut events = client.subscribe(EventFilter::all());
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => status(&event.to_string(), || event.to_json()),
                // Too many too fast: say so, and go on with the newest.
                Err(qmp::Error::EventsLost(lost)) => status(
                    &format!("qemu-machine: {lost} QMP events were lost (too many at once)"),
                    || json!({"status": "events-lost", "count": lost}),
                ),
                // The session is over.
                Err(_) => break,
            }
        }
    })
}
