//! Typed commands: the [`Command`] trait and definitions for the everyday ones.
//!
//! Return types keep the fields tests and tools rely on, and collect everything else in an
//! `extra` map, so a newer QEMU's additions are kept, never rejected. For any command not
//! here, use [`Client::execute`](crate::Client::execute) with plain JSON.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::open_enum::open_enum;

pub use crate::message::{VersionInfo, VersionTriple};

/// A QMP command: its wire name, its arguments (the implementing type, serialised to a JSON
/// object) and the type of its `return` value.
///
/// ```
/// use serde::Serialize;
/// use qmp::Command;
///
/// #[derive(Serialize)]
/// struct QueryName {}
///
/// #[derive(serde::Deserialize)]
/// struct NameInfo { name: Option<String> }
///
/// impl Command for QueryName {
///     const NAME: &'static str = "query-name";
///     type Returns = NameInfo;
/// }
/// ```
pub trait Command: Serialize {
    /// The command name on the wire.
    const NAME: &'static str;
    /// What `return` holds.
    type Returns: DeserializeOwned;
}

/// The `{}` that most commands return.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Empty {}

macro_rules! command {
    ($(#[$meta:meta])* $name:ident = $wire:literal -> $returns:ty { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Serialize, PartialEq)]
        pub struct $name { $($body)* }

        impl Command for $name {
            const NAME: &'static str = $wire;
            type Returns = $returns;
        }
    };
}

command!(
    /// Leaves capabilities negotiation mode, enabling the listed capabilities.
    QmpCapabilities = "qmp_capabilities" -> Empty {
        /// Capabilities to enable, e.g. `["oob"]`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub enable: Option<Vec<String>>,
    }
);
command!(
    /// QEMU's version.
    QueryVersion = "query-version" -> VersionInfo {}
);
command!(
    /// The run state.
    QueryStatus = "query-status" -> StatusInfo {}
);
command!(
    /// The commands this QEMU knows.
    QueryCommands = "query-commands" -> Vec<CommandInfo> {}
);
command!(
    /// The whole QAPI schema (large: hundreds of KiB).
    QueryQmpSchema = "query-qmp-schema" -> Vec<Value> {}
);
command!(
    /// Pauses all vCPUs (emits `STOP`).
    Stop = "stop" -> Empty {}
);
command!(
    /// Resumes all vCPUs (emits `RESUME`).
    Cont = "cont" -> Empty {}
);
command!(
    /// Presses the ACPI power button; the guest decides what happens.
    SystemPowerdown = "system_powerdown" -> Empty {}
);
command!(
    /// Resets the machine (emits `RESET`).
    SystemReset = "system_reset" -> Empty {}
);
command!(
    /// Makes QEMU exit. The connection may close before the reply arrives; that is success.
    Quit = "quit" -> Empty {}
);
command!(
    /// Runs an HMP command and returns its text output.
    HumanMonitorCommand = "human-monitor-command" -> String {
        /// The HMP command line, e.g. `info usernet`.
        #[serde(rename = "command-line")]
        pub command_line: String,
        /// The CPU to run it on.
        #[serde(rename = "cpu-index", skip_serializing_if = "Option::is_none")]
        pub cpu_index: Option<i64>,
    }
);
command!(
    /// Names the file descriptor sent with this command (SCM_RIGHTS).
    Getfd = "getfd" -> Empty {
        /// The name to give it.
        pub fdname: String,
    }
);
command!(
    /// Closes a descriptor received with `getfd`.
    Closefd = "closefd" -> Empty {
        /// Its name.
        pub fdname: String,
    }
);
command!(
    /// Adds the file descriptor sent with this command to an fd set.
    AddFd = "add-fd" -> AddFdInfo {
        /// The set to add to; a new one when absent.
        #[serde(rename = "fdset-id", skip_serializing_if = "Option::is_none")]
        pub fdset_id: Option<i64>,
        /// Free text stored with the descriptor.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub opaque: Option<String>,
    }
);
command!(
    /// Removes a descriptor (or a whole set) from the fd sets.
    RemoveFd = "remove-fd" -> Empty {
        /// The set.
        #[serde(rename = "fdset-id")]
        pub fdset_id: i64,
        /// The descriptor; the whole set when absent.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub fd: Option<i64>,
    }
);
command!(
    /// Lists the fd sets.
    QueryFdsets = "query-fdsets" -> Vec<FdsetInfo> {}
);
command!(
    /// Lists an object's properties.
    QomList = "qom-list" -> Vec<ObjectPropertyInfo> {
        /// The object's QOM path, e.g. `/machine`.
        pub path: String,
    }
);
command!(
    /// Reads a property.
    QomGet = "qom-get" -> Value {
        /// The object's QOM path.
        pub path: String,
        /// The property.
        pub property: String,
    }
);
command!(
    /// Writes a property.
    QomSet = "qom-set" -> Empty {
        /// The object's QOM path.
        pub path: String,
        /// The property.
        pub property: String,
        /// The new value.
        pub value: Value,
    }
);
command!(
    /// Hot-plugs a device.
    DeviceAdd = "device_add" -> Empty {
        /// The device type, e.g. `virtio-blk-pci`.
        pub driver: String,
        /// The device id (needed to remove it later).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub id: Option<String>,
        /// The bus to plug into.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub bus: Option<String>,
        /// Other properties.
        #[serde(flatten)]
        pub properties: Map<String, Value>,
    }
);
command!(
    /// Requests a hot-unplug; completion is the `DEVICE_DELETED` event, and needs the guest.
    DeviceDel = "device_del" -> Empty {
        /// The device id or QOM path.
        pub id: String,
    }
);
command!(
    /// Adds a block node; the options are those of `BlockdevOptions`.
    BlockdevAdd = "blockdev-add" -> Empty {
        /// `driver`, `node-name` and the driver's options.
        #[serde(flatten)]
        pub options: Map<String, Value>,
    }
);
command!(
    /// Removes a block node.
    BlockdevDel = "blockdev-del" -> Empty {
        /// Its node name.
        #[serde(rename = "node-name")]
        pub node_name: String,
    }
);
command!(
    /// Creates a QOM object (`-object` at run time).
    ObjectAdd = "object-add" -> Empty {
        /// The object type, e.g. `secret`.
        #[serde(rename = "qom-type")]
        pub qom_type: String,
        /// Its id.
        pub id: String,
        /// Type-specific properties.
        #[serde(flatten)]
        pub properties: Map<String, Value>,
    }
);
command!(
    /// Deletes a QOM object.
    ObjectDel = "object-del" -> Empty {
        /// Its id.
        pub id: String,
    }
);
command!(
    /// The block devices.
    QueryBlock = "query-block" -> Vec<BlockInfo> {}
);
command!(
    /// All jobs.
    QueryJobs = "query-jobs" -> Vec<JobInfo> {}
);
command!(
    /// Completes a job in state `ready`.
    JobComplete = "job-complete" -> Empty {
        /// The job id.
        pub id: String,
    }
);
command!(
    /// Finalizes a job in state `pending`.
    JobFinalize = "job-finalize" -> Empty {
        /// The job id.
        pub id: String,
    }
);
command!(
    /// Removes a job in state `concluded`.
    JobDismiss = "job-dismiss" -> Empty {
        /// The job id.
        pub id: String,
    }
);
command!(
    /// Cancels a job.
    JobCancel = "job-cancel" -> Empty {
        /// The job id.
        pub id: String,
    }
);
command!(
    /// Starts an outgoing migration.
    Migrate = "migrate" -> Empty {
        /// Where to, e.g. `unix:/path` or `tcp:host:port`.
        pub uri: String,
        /// Further options of newer QEMUs.
        #[serde(flatten)]
        pub options: Map<String, Value>,
    }
);
command!(
    /// Starts listening for an incoming migration (QEMU started with `-incoming defer`).
    MigrateIncoming = "migrate-incoming" -> Empty {
        /// Where to listen.
        pub uri: String,
    }
);
command!(
    /// The migration's state.
    QueryMigrate = "query-migrate" -> MigrationInfo {}
);
command!(
    /// Turns migration capabilities on or off (e.g. `events`).
    MigrateSetCapabilities = "migrate-set-capabilities" -> Empty {
        /// The capabilities and their new states.
        pub capabilities: Vec<MigrationCapabilityStatus>,
    }
);

open_enum!(
    /// The VM's run state (`query-status`).
    RunState {
        /// Running.
        Running => "running",
        /// Paused by `stop`.
        Paused => "paused",
        /// Started with `-S`, not yet resumed.
        Prelaunch => "prelaunch",
        /// Powered off with `-no-shutdown`.
        Shutdown => "shutdown",
        /// Waiting for an incoming migration.
        InMigrate => "inmigrate",
        /// Paused after an outgoing migration.
        PostMigrate => "postmigrate",
        /// The guest panicked.
        GuestPanicked => "guest-panicked",
        /// An internal error.
        InternalError => "internal-error",
        /// An I/O error paused the VM.
        IoError => "io-error",
        /// Paused for debugging.
        Debug => "debug",
        /// Finishing a migration.
        FinishMigrate => "finish-migrate",
        /// Restoring a snapshot.
        RestoreVm => "restore-vm",
        /// Saving a snapshot.
        SaveVm => "save-vm",
        /// Suspended (S3).
        Suspended => "suspended",
        /// Watchdog fired.
        Watchdog => "watchdog",
        /// Paused by a COLO event.
        Colo => "colo",
    }
);

open_enum!(
    /// A job's state (`query-jobs`, `JOB_STATUS_CHANGE`).
    JobStatus {
        /// Created, not started.
        Created => "created",
        /// Running.
        Running => "running",
        /// Paused.
        Paused => "paused",
        /// Ready to complete (mirror-like jobs).
        Ready => "ready",
        /// Paused while ready.
        Standby => "standby",
        /// Waiting for other jobs of its transaction.
        Waiting => "waiting",
        /// Waiting to be finalized.
        Pending => "pending",
        /// Failing or being cancelled.
        Aborting => "aborting",
        /// Done; waits to be dismissed.
        Concluded => "concluded",
        /// Gone.
        Null => "null",
        /// Undefined.
        Undefined => "undefined",
    }
);

open_enum!(
    /// A migration's state.
    MigrationStatus {
        /// Not started.
        None => "none",
        /// Setting up.
        Setup => "setup",
        /// Cancelling.
        Cancelling => "cancelling",
        /// Cancelled.
        Cancelled => "cancelled",
        /// Running.
        Active => "active",
        /// Post-copy phase.
        PostcopyActive => "postcopy-active",
        /// Completed.
        Completed => "completed",
        /// Failed.
        Failed => "failed",
        /// Paused before switch-over.
        PreSwitchover => "pre-switchover",
        /// Switching over.
        Device => "device",
        /// Waiting for unplug.
        WaitUnplug => "wait-unplug",
    }
);

/// `query-status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusInfo {
    /// True when vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
    /// Fields this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `query-commands`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandInfo {
    /// The command name.
    pub name: String,
}

/// The reply to `add-fd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddFdInfo {
    /// The set the descriptor went into.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    /// The descriptor's number inside QEMU.
    pub fd: i64,
}

/// One fd set (`query-fdsets`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FdsetInfo {
    /// The set's id.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    /// Its descriptors.
    #[serde(default)]
    pub fds: Vec<FdsetFdInfo>,
}

/// One descriptor of an fd set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FdsetFdInfo {
    /// The descriptor's number inside QEMU.
    pub fd: i64,
    /// The text given to `add-fd`.
    #[serde(default)]
    pub opaque: Option<String>,
}

/// One property (`qom-list`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectPropertyInfo {
    /// Property name.
    pub name: String,
    /// Its type, e.g. `str`, `child<pc-i440fx-7.2-machine>`, `link<...>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Description, when QEMU has one.
    #[serde(default)]
    pub description: Option<String>,
}

/// One block device (`query-block`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockInfo {
    /// The device name (may be empty for `-blockdev`-only setups).
    #[serde(default)]
    pub device: String,
    /// The qdev id or path.
    #[serde(default)]
    pub qdev: Option<String>,
    /// Whether the medium is locked.
    #[serde(default)]
    pub locked: bool,
    /// Whether the medium is removable.
    #[serde(default)]
    pub removable: bool,
    /// The inserted medium, if any.
    #[serde(default)]
    pub inserted: Option<Value>,
    /// Fields this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One job (`query-jobs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// The job type, e.g. `mirror`, `backup`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its state.
    pub status: JobStatus,
    /// Progress so far.
    #[serde(rename = "current-progress", default)]
    pub current_progress: u64,
    /// Estimated total.
    #[serde(rename = "total-progress", default)]
    pub total_progress: u64,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// Fields this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `query-migrate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MigrationInfo {
    /// The state; absent before any migration.
    #[serde(default)]
    pub status: Option<MigrationStatus>,
    /// Why it failed, if it did.
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
    /// RAM statistics and everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One capability for `migrate-set-capabilities`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationCapabilityStatus {
    /// e.g. `events`.
    pub capability: String,
    /// On or off.
    pub state: bool,
}

// Block jobs and machine queries (issue 14).

open_enum!(
    /// Which part of the source a mirror or backup copies (`sync`).
    SyncMode {
        /// Only the top image.
        Top => "top",
        /// The whole chain.
        Full => "full",
        /// Only new writes.
        None => "none",
        /// Only what a bitmap marks (backup).
        Incremental => "incremental",
        /// Only what a bitmap marks.
        Bitmap => "bitmap",
    }
);

// open_enum! does not derive Default; the typed commands need one.
#[allow(clippy::derivable_impls)]
impl Default for SyncMode {
    fn default() -> Self {
        SyncMode::Full
    }
}

command!(
    /// Starts mirroring `device` to the existing node `target` (a block job).
    BlockdevMirror = "blockdev-mirror" -> Empty {
        /// The job id (default: the device name).
        #[serde(rename = "job-id", skip_serializing_if = "Option::is_none")]
        pub job_id: Option<String>,
        /// The source node or device.
        pub device: String,
        /// The target node.
        pub target: String,
        /// What to copy.
        pub sync: SyncMode,
        /// Bytes per second (0: unlimited).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub speed: Option<u64>,
        /// The node name of the mirror filter.
        #[serde(rename = "filter-node-name", skip_serializing_if = "Option::is_none")]
        pub filter_node_name: Option<String>,
        /// `background` or `write-blocking`.
        #[serde(rename = "copy-mode", skip_serializing_if = "Option::is_none")]
        pub copy_mode: Option<String>,
        /// Finalize by itself (default true).
        #[serde(rename = "auto-finalize", skip_serializing_if = "Option::is_none")]
        pub auto_finalize: Option<bool>,
        /// Dismiss by itself (default true).
        #[serde(rename = "auto-dismiss", skip_serializing_if = "Option::is_none")]
        pub auto_dismiss: Option<bool>,
    }
);
command!(
    /// Starts a point-in-time backup of `device` to the existing node `target`.
    BlockdevBackup = "blockdev-backup" -> Empty {
        /// The job id (default: the device name).
        #[serde(rename = "job-id", skip_serializing_if = "Option::is_none")]
        pub job_id: Option<String>,
        /// The source node or device.
        pub device: String,
        /// The target node.
        pub target: String,
        /// What to copy.
        pub sync: SyncMode,
        /// Bytes per second (0: unlimited).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub speed: Option<u64>,
        /// The dirty bitmap for `incremental`/`bitmap`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub bitmap: Option<String>,
        /// Finalize by itself (default true).
        #[serde(rename = "auto-finalize", skip_serializing_if = "Option::is_none")]
        pub auto_finalize: Option<bool>,
        /// Dismiss by itself (default true).
        #[serde(rename = "auto-dismiss", skip_serializing_if = "Option::is_none")]
        pub auto_dismiss: Option<bool>,
    }
);
command!(
    /// Copies the backing chain into `device` (down to `base-node`), then drops it.
    BlockStream = "block-stream" -> Empty {
        /// The job id (default: the device name).
        #[serde(rename = "job-id", skip_serializing_if = "Option::is_none")]
        pub job_id: Option<String>,
        /// The top node or device.
        pub device: String,
        /// The node to stop at (kept as the new backing file).
        #[serde(rename = "base-node", skip_serializing_if = "Option::is_none")]
        pub base_node: Option<String>,
        /// Bytes per second (0: unlimited).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub speed: Option<u64>,
        /// Finalize by itself (default true).
        #[serde(rename = "auto-finalize", skip_serializing_if = "Option::is_none")]
        pub auto_finalize: Option<bool>,
        /// Dismiss by itself (default true).
        #[serde(rename = "auto-dismiss", skip_serializing_if = "Option::is_none")]
        pub auto_dismiss: Option<bool>,
    }
);
command!(
    /// Cancels a block job (a ready mirror with `force: false` completes without pivoting).
    BlockJobCancel = "block-job-cancel" -> Empty {
        /// The job id.
        pub device: String,
        /// Cancel even a ready mirror at once.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub force: Option<bool>,
    }
);
command!(
    /// Completes a ready block job (a mirror pivots to its target).
    BlockJobComplete = "block-job-complete" -> Empty {
        /// The job id.
        pub device: String,
    }
);
command!(
    /// Pauses a block job.
    BlockJobPause = "block-job-pause" -> Empty {
        /// The job id.
        pub device: String,
    }
);
command!(
    /// Resumes a paused block job.
    BlockJobResume = "block-job-resume" -> Empty {
        /// The job id.
        pub device: String,
    }
);
command!(
    /// Changes a block job's speed limit.
    BlockJobSetSpeed = "block-job-set-speed" -> Empty {
        /// The job id.
        pub device: String,
        /// Bytes per second (0: unlimited).
        pub speed: u64,
    }
);
command!(
    /// The machine types this QEMU offers.
    QueryMachines = "query-machines" -> Vec<MachineInfo> {}
);
command!(
    /// The vCPUs, without interrupting them.
    QueryCpusFast = "query-cpus-fast" -> Vec<CpuInfoFast> {}
);

/// One machine type (`query-machines`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineInfo {
    /// e.g. `pc-i440fx-10.0`.
    pub name: String,
    /// e.g. `pc`.
    #[serde(default)]
    pub alias: Option<String>,
    /// The default machine type.
    #[serde(rename = "is-default", default)]
    pub is_default: bool,
    /// The most CPUs it takes.
    #[serde(rename = "cpu-max", default)]
    pub cpu_max: u64,
    /// Deprecated.
    #[serde(default)]
    pub deprecated: bool,
    /// Fields this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One vCPU (`query-cpus-fast`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuInfoFast {
    /// Its index.
    #[serde(rename = "cpu-index")]
    pub cpu_index: u64,
    /// Its QOM path.
    #[serde(rename = "qom-path")]
    pub qom_path: String,
    /// The host thread running it.
    #[serde(rename = "thread-id")]
    pub thread_id: i64,
    /// The target architecture, e.g. `x86_64`.
    #[serde(default)]
    pub target: Option<String>,
    /// Fields this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_enum_values_and_fields_survive() {
        let status: StatusInfo =
            serde_json::from_value(json!({"running": false, "status": "brand-new", "x": 1}))
                .unwrap();
        assert_eq!(status.status, RunState::Other("brand-new".into()));
        assert_eq!(status.extra["x"], 1);
        let running: RunState = serde_json::from_value(json!("running")).unwrap();
        assert_eq!(running, RunState::Running);
        assert_eq!(serde_json::to_value(&running).unwrap(), json!("running"));
    }
}
