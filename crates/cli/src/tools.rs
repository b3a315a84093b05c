//! The one-shot subcommands: exec, events, qom, ga, accel, version.

use std::io::{Read, Write};

use qemu_machine::{GuestAgent, Probe};
use qemu_machine_cli::shell_syntax::{build_command, parse_value};
use qmp::{Client, EventFilter, Request};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::args::{
    seconds, AccelArgs, Address, EventsArgs, ExecArgs, FsfreezeAction, GaAction, GaArgs, QomAction,
    QomArgs, VersionArgs,
};
use crate::failure::{exit_status_code, qmp_error_text, Failure, Outcome};
use crate::output::print_json;
use crate::term::spinner;

async fn connect(address: &Address) -> Result<Client, Failure> {
    Ok(Client::builder()
        .name("qemu-machine")
        .connect(&address.parse()?)
        .await?)
}

pub(crate) async fn exec(args: ExecArgs) -> Outcome {
    let command = build_command(&args.command, &args.arguments)
        .map_err(|e| Failure::with_status(format!("{e} (arguments are key=value)"), 2))?;
    let client = connect(&args.address).await?;
    let arguments = command.get("arguments").cloned().unwrap_or(Value::Null);
    let value = client
        .execute_request(Request::new(args.command).arguments(arguments))
        .await
        .map_err(Failure::command)?;
    print_json(&value, args.pretty);
    Ok(0)
}

pub(crate) async fn events(args: EventsArgs) -> Outcome {
    let client = connect(&args.address).await?;
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
    let deadline = args
        .timeout
        .map(|t| seconds(t, "--timeout"))
        .transpose()?
        .map(|t| Instant::now() + t);
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

/// `/machine/peripheral/net0.link` → (`/machine/peripheral/net0`, `link`).
fn split_property(text: &str) -> Result<(&str, &str), Failure> {
    text.rsplit_once('.')
        .filter(|(path, property)| !path.is_empty() && !property.is_empty())
        .ok_or_else(|| Failure::with_status(format!("expected PATH.PROPERTY, got {text:?}"), 2))
}

fn join(path: &str, name: &str) -> String {
    if path.ends_with('/') {
        format!("{path}{name}")
    } else {
        format!("{path}/{name}")
    }
}

async fn qom_list(client: &Client, path: &str) -> Result<Vec<Value>, Failure> {
    let list = client
        .execute("qom-list", json!({"path": path}))
        .await
        .map_err(Failure::command)?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

pub(crate) async fn qom(args: QomArgs) -> Outcome {
    let client = connect(&args.address).await?;
    match args.action {
        QomAction::List { path } => {
            let list = qom_list(&client, &path).await?;
            if args.json {
                print_json(&Value::Array(list), false);
            } else {
                for property in list {
                    let name = property["name"].as_str().unwrap_or_default();
                    let kind = property["type"].as_str().unwrap_or_default();
                    if kind.starts_with("child<") {
                        println!("{name}/");
                    } else if kind.starts_with("link<") {
                        println!("@{name}/");
                    } else {
                        println!("{name}");
                    }
                }
            }
        }
        QomAction::Get { property } => {
            let (path, name) = split_property(&property)?;
            let value = client
                .execute("qom-get", json!({"path": path, "property": name}))
                .await
                .map_err(Failure::command)?;
            match (&value, args.json) {
                (Value::Object(map), false) => {
                    for (key, value) in map {
                        println!("{key}: {value}");
                    }
                }
                _ => print_json(&value, false),
            }
        }
        QomAction::Set { property, value } => {
            let (path, name) = split_property(&property)?;
            client
                .execute(
                    "qom-set",
                    json!({"path": path, "property": name, "value": parse_value(&value)}),
                )
                .await
                .map_err(Failure::command)?;
        }
        QomAction::Tree { path } => {
            let tree = qom_tree(&client, &path).await?;
            if args.json {
                print_json(&tree, true);
            } else {
                print_tree(&path, &tree, 0);
            }
        }
    }
    Ok(0)
}

/// `{"properties": {name: {"type", "value"}}, "children": {name: tree}}`.
async fn qom_tree(client: &Client, path: &str) -> Result<Value, Failure> {
    let mut properties = Map::new();
    let mut children = Map::new();
    for property in qom_list(client, path).await? {
        let name = property["name"].as_str().unwrap_or_default().to_string();
        let kind = property["type"].as_str().unwrap_or_default().to_string();
        if kind.starts_with("child<") {
            let child = Box::pin(qom_tree(client, &join(path, &name))).await?;
            children.insert(name, child);
            continue;
        }
        let value = match client
            .execute("qom-get", json!({"path": path, "property": name}))
            .await
        {
            Ok(value) => value,
            Err(e) => json!(format!("<EXCEPTION: {}>", qmp_error_text(&e))),
        };
        properties.insert(name, json!({"type": kind, "value": value}));
    }
    Ok(json!({"properties": properties, "children": children}))
}

fn print_tree(path: &str, tree: &Value, depth: usize) {
    let indent = "  ".repeat(depth);
    println!("{indent}{path}");
    if let Some(properties) = tree["properties"].as_object() {
        for (name, property) in properties {
            println!(
                "{indent}  {name}: {} ({})",
                property["value"],
                property["type"].as_str().unwrap_or_default()
            );
        }
    }
    if let Some(children) = tree["children"].as_object() {
        for (name, child) in children {
            print_tree(&join(path, name), child, depth + 1);
        }
    }
}

pub(crate) async fn ga(args: GaArgs) -> Outcome {
    let address = args.address.parse()?;
    let timeout = seconds(args.timeout, "--timeout")?;
    let waiting = spinner("waiting for the guest agent");
    let agent = GuestAgent::connect(&address, timeout).await;
    if let Some(bar) = waiting {
        bar.finish_and_clear();
    }
    let agent = agent?;
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

pub(crate) async fn accel(args: AccelArgs) -> Outcome {
    let probe = Probe::of(&args.binary).await?;
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
                "binary": args.binary,
                "accelerators": probe.accelerators,
                "kvm": kvm,
                "auto": auto,
            }),
            false,
        );
    } else {
        println!("binary: {} ({})", args.binary, probe.version_text);
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

pub(crate) async fn version(args: VersionArgs) -> Outcome {
    println!("qemu-machine {}", env!("CARGO_PKG_VERSION"));
    match Probe::of(&args.binary).await {
        Ok(probe) => println!("{}", probe.version_text),
        Err(e) => println!("{}: {e}", args.binary),
    }
    Ok(0)
}
