//! `--save-state`, `--restore` and `--warm`: how the VM is started (booted, restored from a
//! file, or through the snapshot cache), and its state saved when the user detaches.

use std::time::Duration;

use qemu_machine::snapshot_cache::{SnapshotCache, Warm};
use qemu_machine::Machine;
use serde_json::json;

use crate::config::RunOptions;
use crate::term::status;

/// `--save-state`, `--restore` and `--warm`.
pub(super) struct WarmOptions {
    pub(super) save_state: Option<std::path::PathBuf>,
    pub(super) restore: Option<std::path::PathBuf>,
    pub(super) cache: bool,
}

/// How the VM was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Started {
    /// Booted.
    Booted,
    /// From `--restore FILE`.
    Restored,
    /// From the snapshot cache's entry.
    CacheHit,
    /// Booted, saved into the cache, restored from it.
    CacheBuilt,
}

impl Started {
    /// A status line for a VM that did not simply boot.
    pub(super) fn report(self, warm: &WarmOptions, cache: Option<&SnapshotCache>) {
        let dir = cache.map(|c| c.dir().to_path_buf());
        match self {
            Started::Booted => {}
            Started::Restored => {
                let path = warm.restore.as_deref().unwrap_or(std::path::Path::new(""));
                status(
                    &format!("qemu-machine: restored from {}", path.display()),
                    || json!({"status": "restored", "path": path}),
                );
            }
            Started::CacheHit => status(
                "qemu-machine: snapshot cache hit: restored, not booted",
                || json!({"status": "cache-hit", "dir": dir}),
            ),
            Started::CacheBuilt => status(
                "qemu-machine: snapshot cache miss: booted, saved the entry, restored it",
                || json!({"status": "cache-built", "dir": dir}),
            ),
        }
    }
}

/// Launches the VM: boots it, restores `--restore FILE`, or goes through the snapshot
/// cache (`--warm`: the entry is ready when the prompt shows).
pub(super) async fn start(
    vm: &mut Machine,
    warm: &WarmOptions,
    cache: Option<&SnapshotCache>,
    prompt: qemu_machine::Pattern,
    options: &RunOptions,
) -> qemu_machine::Result<Started> {
    if let Some(path) = &warm.restore {
        vm.launch_restored(path, options.timeout).await?;
        return Ok(Started::Restored);
    }
    if let Some(cache) = cache {
        return Ok(
            match cache.launch(vm, prompt, options.exec_timeout).await? {
                Warm::Hit => Started::CacheHit,
                Warm::Built => Started::CacheBuilt,
            },
        );
    }
    vm.launch().await?;
    Ok(Started::Booted)
}

/// `--save-state`: the guest's state to `path`, said on stderr.
pub(super) async fn save(
    vm: &mut Machine,
    path: &std::path::Path,
    timeout: Duration,
) -> qemu_machine::Result<()> {
    let info = vm.save_state(path, timeout).await?;
    let mib = info.file_bytes() as f64 / (1u64 << 20) as f64;
    status(
        &format!(
            "qemu-machine: state saved to {} ({mib:.1} MiB in {} ms)",
            path.display(),
            info.save_ms
        ),
        || json!({"status": "state-saved", "path": path, "bytes": info.file_bytes(), "ms": info.save_ms}),
    );
    Ok(())
}
