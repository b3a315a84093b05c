//! The main job: boot the built-in guest and show it working: its banner on the serial
//! console, an echo round trip, `query-status` over QMP, and a clean ACPI powerdown.

use std::time::{Duration, Instant};

use qemu_machine::guest::BANNER;
use qemu_machine::{Accel, Machine};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let binary = qemu_test_support::qemu();
    let start = Instant::now();
    let mut vm = Machine::new(Machine::builder(binary).name("demo").builtin_guest());
    vm.launch().await?;
    let version = vm
        .qmp_client()
        .and_then(|client| client.greeting().map(|g| g.version.qemu.to_string()))
        .unwrap_or_default();
    println!(
        "launched {} (QEMU {version}, pid {}, accelerator {}) in {:.0?}",
        vm.name(),
        vm.pid().unwrap_or(0),
        Accel::KvmOrTcg.as_arg(),
        start.elapsed()
    );
    let console = vm.console()?;

    let banner = console.expect(BANNER, T).await?;
    println!(
        "console: {:?} after {:.0?}",
        banner.matched,
        start.elapsed()
    );

    let sent = Instant::now();
    let echo = console
        .exec_and_expect("hello, guest", "hello, guest\n", T)
        .await?;
    println!(
        "console: echo {:?} in {:.1?}",
        echo.matched.trim_end(),
        sent.elapsed()
    );

    let status = vm.cmd("query-status", json!({})).await?;
    println!("qmp: query-status -> {status}");

    vm.cmd("system_powerdown", json!({})).await?;
    let shutdown = vm
        .event_wait("SHUTDOWN", Some(json!({"data": {"guest": true}})), T)
        .await?;
    println!("qmp: event {shutdown}");
    vm.wait(T).await?;
    let history = String::from_utf8_lossy(&console.history()).into_owned();
    println!(
        "powered off cleanly: {}, console said {:?}",
        vm.exit_status().map_or("?".into(), |s| s.to_string()),
        history
    );
    Ok(())
}
