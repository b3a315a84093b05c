//! Typed views of the everyday events, with the raw event as the fallback for all others.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::command::{JobStatus, MigrationStatus};
use crate::message::Event;

/// An event decoded by name. Anything unknown, or whose data does not fit the expected shape,
/// is [`TypedEvent::Other`]: decoding never fails.
///
/// ```
/// use qmp::{Event, Timestamp, TypedEvent};
///
/// let event = Event::new("SHUTDOWN", serde_json::json!({"guest": true, "reason": "guest-shutdown"}), Timestamp::default());
/// match event.typed() {
///     TypedEvent::Shutdown(data) => assert!(data.guest),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TypedEvent {
    /// QEMU is shutting down (or, with `-no-shutdown`, the guest powered off).
    Shutdown(ShutdownData),
    /// vCPUs stopped.
    Stop,
    /// vCPUs resumed.
    Resume,
    /// The machine was reset.
    Reset(ResetData),
    /// `system_powerdown` was requested.
    Powerdown,
    /// A device's hot-unplug completed.
    DeviceDeleted(DeviceDeletedData),
    /// A job changed state.
    JobStatusChange(JobStatusChangeData),
    /// A block job completed.
    BlockJobCompleted(BlockJobData),
    /// A block job is ready to complete.
    BlockJobReady(BlockJobData),
    /// A block job hit an I/O error.
    BlockJobError(BlockJobErrorData),
    /// A block job was cancelled.
    BlockJobCancelled(BlockJobData),
    /// A migration changed state.
    Migration(MigrationData),
    /// Any other event.
    Other(Event),
}

/// `SHUTDOWN` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShutdownData {
    /// True when the guest asked for it.
    #[serde(default)]
    pub guest: bool,
    /// e.g. `host-qmp-quit`, `guest-shutdown`, `host-signal`, `guest-reset`.
    #[serde(default)]
    pub reason: String,
}

/// `RESET` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResetData {
    /// True when the guest asked for it.
    #[serde(default)]
    pub guest: bool,
    /// e.g. `guest-reset`, `host-qmp-system-reset`.
    #[serde(default)]
    pub reason: String,
}

/// `DEVICE_DELETED` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceDeletedData {
    /// The device id, when it had one.
    #[serde(default)]
    pub device: Option<String>,
    /// Its QOM path.
    #[serde(default)]
    pub path: String,
}

/// `JOB_STATUS_CHANGE` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStatusChangeData {
    /// The job id.
    pub id: String,
    /// The new state.
    pub status: JobStatus,
}

/// `BLOCK_JOB_COMPLETED`, `_READY` and `_CANCELLED` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockJobData {
    /// The job type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The job id (called `device` for history's sake).
    #[serde(default)]
    pub device: String,
    /// Total work.
    #[serde(default)]
    pub len: u64,
    /// Work done.
    #[serde(default)]
    pub offset: u64,
    /// Rate limit.
    #[serde(default)]
    pub speed: u64,
    /// Why it failed, on completion with an error.
    #[serde(default)]
    pub error: Option<String>,
    /// Fields this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `BLOCK_JOB_ERROR` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockJobErrorData {
    /// The job id.
    #[serde(default)]
    pub device: String,
    /// `read` or `write`.
    #[serde(default)]
    pub operation: String,
    /// What QEMU will do: `ignore`, `report`, `stop`.
    #[serde(default)]
    pub action: String,
}

/// `MIGRATION` data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationData {
    /// The new state.
    pub status: MigrationStatus,
}

impl Event {
    /// Decodes the event by name; see [`TypedEvent`].
    pub fn typed(&self) -> TypedEvent {
        fn data<T: serde::de::DeserializeOwned>(
            event: &Event,
            wrap: fn(T) -> TypedEvent,
        ) -> TypedEvent {
            event
                .data_as()
                .map_or_else(|_| TypedEvent::Other(event.clone()), wrap)
        }
        match self.name() {
            "SHUTDOWN" => data(self, TypedEvent::Shutdown),
            "STOP" => TypedEvent::Stop,
            "RESUME" => TypedEvent::Resume,
            "RESET" => data(self, TypedEvent::Reset),
            "POWERDOWN" => TypedEvent::Powerdown,
            "DEVICE_DELETED" => data(self, TypedEvent::DeviceDeleted),
            "JOB_STATUS_CHANGE" => data(self, TypedEvent::JobStatusChange),
            "BLOCK_JOB_COMPLETED" => data(self, TypedEvent::BlockJobCompleted),
            "BLOCK_JOB_READY" => data(self, TypedEvent::BlockJobReady),
            "BLOCK_JOB_ERROR" => data(self, TypedEvent::BlockJobError),
            "BLOCK_JOB_CANCELLED" => data(self, TypedEvent::BlockJobCancelled),
            "MIGRATION" => data(self, TypedEvent::Migration),
            _ => TypedEvent::Other(self.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Timestamp;
    use serde_json::json;

    fn event(name: &str, data: Value) -> Event {
        Event::new(name, data, Timestamp::default())
    }

    #[test]
    fn decodes_known_and_falls_back() {
        assert!(matches!(
            event("JOB_STATUS_CHANGE", json!({"id": "j", "status": "ready"})).typed(),
            TypedEvent::JobStatusChange(JobStatusChangeData {
                status: JobStatus::Ready,
                ..
            })
        ));
        assert!(matches!(
            event("MIGRATION", json!({"status": "wormhole"})).typed(),
            TypedEvent::Migration(MigrationData {
                status: MigrationStatus::Other(_)
            })
        ));
        assert!(matches!(
            event("JOB_STATUS_CHANGE", json!({"nonsense": 1})).typed(),
            TypedEvent::Other(_)
        ));
        assert!(matches!(
            event("VSERPORT_CHANGE", json!({})).typed(),
            TypedEvent::Other(_)
        ));
    }
}
