//! Many machines at once: launched and shut down concurrently, each result its own.

use std::time::Duration;

use crate::error::Result;
use crate::machine::Machine;

/// Launches every machine concurrently; one result per machine, in order.
///
/// ```no_run
/// # async fn demo() {
/// use qemu_machine::{fleet, Machine};
///
/// let mut vms: Vec<Machine> = (0..10)
///     .map(|_| Machine::new(Machine::builder("qemu-system-x86_64").machine_type("none")))
///     .collect();
/// let results = fleet::launch_all(&mut vms).await;
/// for (vm, result) in vms.iter().zip(results) {
///     if let Err(e) = result {
///         eprintln!("{}: {e}", vm.name());
///     }
/// }
/// fleet::shutdown_all(&mut vms, std::time::Duration::from_secs(30)).await;
/// # }
/// ```
///
/// # Errors
///
/// None of its own: each machine's result is in the list, as [`Machine::launch`] returns
/// it.
pub async fn launch_all(machines: &mut [Machine]) -> Vec<Result<()>> {
    futures::future::join_all(machines.iter_mut().map(|m| m.launch())).await
}

/// Shuts every machine down concurrently, each with `timeout`; one result per machine.
///
/// # Errors
///
/// None of its own: each machine's result is in the list, as [`Machine::shutdown_timeout`]
/// returns it.
pub async fn shutdown_all(machines: &mut [Machine], timeout: Duration) -> Vec<Result<()>> {
    futures::future::join_all(machines.iter_mut().map(|m| m.shutdown_timeout(timeout))).await
}
