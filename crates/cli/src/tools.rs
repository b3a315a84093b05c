//! The one-shot subcommands: exec, events, ga, accel, version (and qom, in its own
//! module): each connects, does one thing, prints it and exits.

use std::io::{Read, Write};
use std::time::Duration;

use qemu_machine::{GuestAgent, Probe};
use qemu_machine_cli::shell_syntax::build_command;
use qmp::{Client, ClientBuilder, EventFilter, Request};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::args::{
    optional_seconds, seconds, AccelArgs, Address, EventsArgs, ExecArgs, FsfreezeAction, GaAction,
    GaArgs, VersionArgs,
};
use crate::failure::{exit_status_code, Failure, Outcome};
use crate::output::print_json;
use crate::term::with_spinner;

/// A QMP client of the server at `address`, named `qemu-machine`; `timeout` bounds the
/// connection, the greeting, the negotiation and (by default) each command.
pub(crate) async fn connect(
    address: &Address,
    timeout: Option<Duration>,
) -> Result<Client, Failure> {
    Ok(client_builder("qemu-machine", timeout)
        .connect(&address.parse()?)
        .await?)
}

/// A client builder named `name` with every deadline set to `timeout` when given.
pub(crate) fn client_builder(name: &str, timeout: Option<Duration>) -> ClientBuilder {
    let builder = Client::builder().name(name);
    match timeout {
        Some(timeout) => builder
            .connect_timeout(timeout)
            .greeting_timeout(timeout)
            .command_timeout(timeout),
        None => builder,
    }
}

/// `qemu-machine exec`: one command, its result as JSON; a QMP error as `Class: desc`.
pub(crate) async fn exec(args: ExecArgs) -> Outcome {
    let command = build_command(&args.command, &args.arguments)
        .map_err(|e| Failure::with_status(format!("{e} (arguments are key=value)"), 2))?;
    let timeout = optional_seconds(args.timeout, "--timeout")?;
    let client = connect(&args.address, timeout).await?;
    let arguments = command.get("arguments").cloned().unwrap_or(Value::Null);
    let value = client
        .execute_request(Request::new(args.command).arguments(arguments))
        .await
        .map_err(Failure::command)?;
    print_json(&value, args.pretty);
    Ok(0)
}

/// `qemu-machine events`: events as JSON lines, until `--count`, `--timeout` or the end of
/// the connection.
pub(crate) async fn events(args: EventsArgs) -> Outcome {
    // JSON lines whether or not --json was given.
    let _ = args.json;
    let timeout = optional_seconds(args.timeout, "--timeout")?;
    let client = connect(&args.address, timeout).await?;
    let filter = if args.names.is_empty() {
        EventFilter::all()
    } else {
        EventFilter::names(args.names.clone())
    };
    let mut events = client.subscribe(filter);
    eprintln!(
        "qemu-machine: listening for events from {}",
        args.address.address
    );
    // A deadline too far to represent is no deadline.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut seen = 0;
    let mut stdout = std::io::stdout();
    while args.count.is_none_or(|count| seen < count) {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(next) => next,
                Err(_) if args.count.is_none() => return Ok(0),
                Err(_) => {
                    return Err(Failure::new(format!(
                        "timed out with {seen} of {} events",
                        args.count.unwrap_or(0)
                    )))
                }
            },
            None => events.recv().await,
        };
        match next {
            Ok(event) => {
                writeln!(stdout, "{event}")?;
                stdout.flush()?;
                seen += 1;
            }
            Err(qmp::Error::EventsLost(n)) => eprintln!("qemu-machine: {n} events were lost"),
            Err(e) if e.is_disconnected() && args.count.is_none() => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}

/// `qemu-machine ga`: one guest agent request, once the agent answers.
pub(crate) async fn ga(args: GaArgs) -> Outcome {
    let address = args.address.parse()?;
    let timeout = seconds(args.timeout, "--timeout")?;
    let agent = with_spinner(
        "waiting for the guest agent",
        GuestAgent::connect(&address, timeout),
    )
    .await?;
    match args.action {
        GaAction::Ping => {
            agent.ping().await?;
            println!("pong");
        }
        GaAction::Info => print_json(&agent.info().await?, true),
        GaAction::Exec {
            path,
            args: arguments,
        } => {
            let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
            let output = agent.exec(&path, &arguments, timeout).await?;
            std::io::stdout().write_all(&output.stdout)?;
            std::io::stderr().write_all(&output.stderr)?;
            return Ok(exit_status_code(output.exit_code, output.signal));
        }
        GaAction::Cat { path } => std::io::stdout().write_all(&agent.read_file(&path).await?)?,
        GaAction::Write { path } => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data)?;
            agent.write_file(&path, &data).await?;
        }
        GaAction::Fsfreeze { action } => match action {
            FsfreezeAction::Freeze => {
                println!("{} filesystems frozen", agent.fsfreeze_freeze().await?)
            }
            FsfreezeAction::Thaw => println!("{} filesystems thawed", agent.fsfreeze_thaw().await?),
            FsfreezeAction::Status => println!("{}", agent.fsfreeze_status().await?),
        },
        GaAction::Shutdown { mode } => agent.shutdown(mode.as_str()).await?,
    }
    Ok(0)
}

/// `qemu-machine accel`: the binary's accelerators, whether KVM is usable here, and what
/// `--accel auto` picks.
pub(crate) async fn accel(args: AccelArgs) -> Outcome {
    let probe = Probe::of(&args.qemu.binary).await?;
    let kvm = if probe.kvm_usable() {
        "usable"
    } else if !probe.accelerators.contains("kvm") {
        "not in this binary"
    } else if qemu_machine::is_kvm_pvm() {
        "not usable: /dev/kvm is kvm-pvm, a software KVM"
    } else {
        "not usable: /dev/kvm cannot be opened read-write"
    };
    let auto = qemu_machine::Accel::KvmOrTcg.as_arg();
    if args.json {
        print_json(
            &json!({
                "binary": args.qemu.binary,
                "accelerators": probe.accelerators,
                "kvm": kvm,
                "auto": auto,
            }),
            false,
        );
    } else {
        println!("binary: {} ({})", args.qemu.binary, probe.version_text);
        println!(
            "accelerators: {}",
            probe
                .accelerators
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("kvm: {kvm}");
        println!("--accel auto: {auto}");
    }
    Ok(0)
}

/// `qemu-machine version`: this tool's version and QEMU's (or why QEMU did not say).
pub(crate) async fn version(args: VersionArgs) -> Outcome {
    println!("qemu-machine {}", env!("CARGO_PKG_VERSION"));
    match Probe::of(&args.qemu.binary).await {
        Ok(probe) => println!("{}", probe.version_text),
        Err(e) => println!("{}: {e}", args.qemu.binary),
    }
    Ok(0)
}
