//! Hot-unplug that waits for the guest to let go.

use std::time::Duration;

use qmp::Event;
use serde_json::json;

use crate::error::Result;
use crate::machine::Machine;

/// Sends `device_del` for `id` and waits (at most `timeout`) for its `DEVICE_DELETED`.
///
/// Unplugging needs the guest's cooperation, so this can take a while, or time out when
/// the guest ignores it. QEMU may report the deletion more than once (e.g. for a device
/// and its backend): duplicates already queued are dropped, so a later wait does not find
/// a stale one. The machine's event subscription exists from launch, so the event cannot
/// slip past between the command and the wait.
///
/// ```no_run
/// # async fn f(vm: &mut qemu_machine::Machine) -> qemu_machine::Result<()> {
/// use qemu_machine::hotplug::device_del;
/// use serde_json::json;
/// use std::time::Duration;
///
/// vm.cmd("device_add", json!({"driver": "virtio-net-pci", "id": "nic1"})).await?;
/// let event = device_del(vm, "nic1", Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`Machine::cmd`] for `device_del`; [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when no `DEVICE_DELETED`
/// for `id` arrives within `timeout` (the guest ignored the unplug).
pub async fn device_del(vm: &mut Machine, id: &str, timeout: Duration) -> Result<Event> {
    vm.cmd("device_del", json!({"id": id})).await?;
    let event = vm
        .event_wait(
            "DEVICE_DELETED",
            Some(json!({"data": {"device": id}})),
            timeout,
        )
        .await?;
    let path = event.data()["path"].clone();
    vm.forget_events(|e| {
        e.name() == "DEVICE_DELETED" && (e.data()["device"] == id || e.data()["path"] == path)
    });
    Ok(event)
}
