//! `qemu-machine qom`: list, get, set and walk QOM properties, printed for people or, with
//! `--json`, as JSON.

use qemu_machine_cli::shell_syntax::parse_value;
use qmp::Client;
use serde_json::{json, Map, Value};

use crate::args::{optional_seconds, QomAction, QomArgs};
use crate::failure::{qmp_error_text, Failure, Outcome};
use crate::output::print_json;
use crate::tools::connect;

/// `qemu-machine qom`: one action on the server at the given address.
pub(crate) async fn qom(args: QomArgs) -> Outcome {
    let timeout = optional_seconds(args.timeout, "--timeout")?;
    let client = connect(&args.address, timeout).await?;
    match args.action {
        QomAction::List { path } => {
            let list = qom_list(&client, &path).await?;
            if args.json {
                print_json(&Value::Array(list), false);
            } else {
                for property in &list {
                    let (name, kind) = name_and_type(property);
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
            let value = qom_get(&client, path, name)
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
            let tree = match timeout {
                // One deadline for the whole walk, however many objects it visits.
                Some(timeout) => tokio::time::timeout(timeout, qom_tree(&client, &path))
                    .await
                    .map_err(|_| {
                        Failure::new(format!(
                            "timed out after {timeout:?} walking the QOM tree under {path}"
                        ))
                    })??,
                None => qom_tree(&client, &path).await?,
            };
            if args.json {
                print_json(&tree, true);
            } else {
                print_tree(&path, &tree, 0);
            }
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

/// The path of the child `name` of the object at `path`.
fn join(path: &str, name: &str) -> String {
    if path.ends_with('/') {
        format!("{path}{name}")
    } else {
        format!("{path}/{name}")
    }
}

/// The properties of the object at `path`, as `qom-list` returns them.
async fn qom_list(client: &Client, path: &str) -> Result<Vec<Value>, Failure> {
    let list = client
        .execute("qom-list", json!({"path": path}))
        .await
        .map_err(Failure::command)?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

/// The name and type (`child<...>`, `link<...>`, `string`, ...) of a `qom-list` entry.
fn name_and_type(property: &Value) -> (&str, &str) {
    (
        property["name"].as_str().unwrap_or_default(),
        property["type"].as_str().unwrap_or_default(),
    )
}

/// The value of the property `name` of the object at `path`.
async fn qom_get(client: &Client, path: &str, name: &str) -> Result<Value, qmp::Error> {
    client
        .execute("qom-get", json!({"path": path, "property": name}))
        .await
}

/// `{"properties": {name: {"type", "value"}}, "children": {name: tree}}`.
async fn qom_tree(client: &Client, path: &str) -> Result<Value, Failure> {
    let mut properties = Map::new();
    let mut children = Map::new();
    for property in qom_list(client, path).await? {
        let (name, kind) = name_and_type(&property);
        if kind.starts_with("child<") {
            let child = Box::pin(qom_tree(client, &join(path, name))).await?;
            children.insert(name.to_string(), child);
            continue;
        }
        let value = match qom_get(client, path, name).await {
            Ok(value) => value,
            Err(e) => json!(format!("<EXCEPTION: {}>", qmp_error_text(&e))),
        };
        properties.insert(name.to_string(), json!({"type": kind, "value": value}));
    }
    Ok(json!({"properties": properties, "children": children}))
}

/// A tree from [`qom_tree`] for people: each object's path, then its properties as
/// `name: value (type)`, indented by depth.
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
