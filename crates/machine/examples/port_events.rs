//! Port of a Python stop/cont test: events matched with a sub-dict, and execute-and-await
//! (`cargo run -p qemu-machine --example port_events`; QEMU from `$QEMU`).
use std::time::Duration;

use qemu_machine::qmp::commands::{QueryStatus, RunState};
use qemu_machine::{Machine, Report};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Report> {
    let t = Duration::from_secs(5);
    let mut vm = Machine::new(Machine::builder(qemu_test_support::qemu()).builtin_guest());
    vm.launch().await?;
    vm.cmd("stop", ()).await?;
    let stop = vm.event_wait("STOP", None, t).await?;
    println!("{}", stop.name());
    assert_eq!(vm.call(&QueryStatus {}).await?.status, RunState::Paused);
    let (_, resume) = vm.execute_and_wait("cont", (), "RESUME", None, t).await?;
    println!("{}", resume.name());
    vm.cmd("system_reset", ()).await?;
    let reset = vm
        .event_wait("RESET", Some(json!({"data": {"guest": false}})), t)
        .await?;
    println!("{} {}", reset.name(), reset.to_json()["data"]);
    assert_eq!(vm.call(&QueryStatus {}).await?.status, RunState::Running);
    vm.shutdown().await?;
    Ok(())
}
