//! Saving a machine's whole state (RAM, devices, CPU) to a file, and launching a machine
//! from such a file, resuming where it was saved.
//!
//! The mechanism is QEMU's migration to a file descriptor the library hands QEMU itself
//! over the QMP socket (SCM_RIGHTS), so no shell and no path QEMU opens on its own:
//!
//! - QEMU 9.0 and later: `add-fd` and `migrate uri=file:/dev/fdset/N,offset=4096`
//!   (`migrate-incoming` alike). 10.0 warns that `fd:` to a file is deprecated.
//! - QEMU 7.2 up to 8.2: `getfd` and `migrate uri=fd:NAME` (7.2 has no `file:` URI), the
//!   descriptor positioned after the header.
//!
//! The guest is paused (`stop`) before the migration starts, so the stream is written in
//! one pass and QEMU never has to resend dirty pages; zero pages cost a few bytes each. A
//! Linux guest with 256 MiB is ~100 MiB on disk, written in ~0.2 s (see
//! docs/performance.md).
//!
//! # The file
//!
//! A 4 KiB header, then QEMU's migration stream (which starts with `QEVM`). The header is
//! [`STATE_MAGIC`], a little-endian `u32` length, and [`StateInfo`] as JSON, padded with
//! zeros. It is written last, once the stream is complete and its BLAKE3 hash known, and
//! the file is renamed into place atomically: a file with this magic is always whole.
//! Restoring checks the magic, the length, the stream's magic and its hash (computed
//! while QEMU starts, so it costs no time when there is a spare core) before QEMU reads a
//! byte of it.
//!
//! # Disks
//!
//! A state refers to the disks as they were when it was saved. A restored machine never
//! writes to them: every writable typed [`Disk`](crate::devices::Disk) is attached with
//! `snapshot=on` (a temporary qcow2 overlay of QEMU's own, with the image as its backing
//! file, gone when QEMU exits), so machines restored from one state at once each write to
//! an overlay of their own. The size and modification time of each writable disk are
//! recorded, and a restore refuses a disk that changed since. Disks given as raw
//! [`args`](crate::MachineBuilder::args) are passed as they are: attach them read-only or
//! with `snapshot=on`.
//!
//! What QEMU cannot migrate is refused before anything is saved: 9p shares, `virtiofs`
//! (`vhost-user-fs`) devices, and a `snapshot=on` disk the guest has written to (those
//! writes live in an overlay that dies with this QEMU).
//!
//! ```no_run
//! # async fn f(dir: &std::path::Path) -> qemu_machine::Result<()> {
//! use std::time::Duration;
//! use qemu_machine::Machine;
//!
//! let builder = Machine::builder("qemu-system-x86_64").machine_type("pc").console(None, 0);
//! let mut vm = Machine::new(builder.clone());
//! vm.launch().await?;
//! // ... boot, get the guest where the next runs should start ...
//! let state = dir.join("booted.state");
//! vm.save_state(&state, Duration::from_secs(60)).await?;
//! vm.shutdown().await?;
//!
//! // Later, any number of times, with the same configuration:
//! let mut warm = Machine::new(builder);
//! warm.launch_restored(&state, Duration::from_secs(30)).await?;
//! warm.console()?.send_line("echo back").await?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{Config, MachineBuilder};
use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;
use crate::state_file::{corrupt, create_partial, hash_stream, header_bytes, open_state};
pub use crate::state_file::{
    read_info, DiskStamp, StateInfo, HEADER_BYTES, STATE_FORMAT, STATE_MAGIC,
};

/// How often the migration's progress is asked.
const POLL: Duration = Duration::from_millis(2);
/// QEMU's default bandwidth limit (128 MiB/s) would make a 100 MiB save take most of a
/// second; this one is no limit in effect.
const MAX_BANDWIDTH: u64 = 1 << 40;
/// The name the descriptor has in QEMU on versions before 9.0.
const FD_NAME: &str = "qm-state";

/// Why QEMU could not migrate a machine of this configuration, one sentence each.
pub(crate) fn migration_blockers(config: &Config) -> Vec<String> {
    let mut blockers = config.devices.migration_blockers();
    let args = &config.args;
    for (i, arg) in args.iter().enumerate() {
        let value = args.get(i + 1).map(String::as_str).unwrap_or_default();
        let flag = arg.trim_start_matches('-');
        if flag == "virtfs" || flag == "fsdev" || (flag == "device" && value.contains("9p")) {
            blockers.push(format!(
                "the 9p share in `{arg} {value}`: QEMU cannot migrate a 9p export (virtio-9p \
                 keeps host file handles the guest has open, so QEMU blocks migration while \
                 it is mounted)"
            ));
        } else if flag == "device" && value.starts_with("vhost-user-fs") {
            blockers.push(format!(
                "the virtiofs device `{value}`: its state lives in virtiofsd, outside QEMU, \
                 and QEMU refuses to migrate it"
            ));
        }
    }
    blockers
}

/// A hash of everything in a configuration that a restore must match: the machine, the
/// devices and the raw arguments. The binary may differ (its version is checked apart,
/// with a clearer error), and so may names, directories, the monitor and logs,
/// `snapshot=on` on a writable disk and `-incoming` (a restore adds them, and a restored
/// machine's state can be saved again).
pub(crate) fn fingerprint(config: &Config) -> String {
    let mut devices = config.devices.clone();
    devices.snapshot_writable_disks();
    // A restored machine runs with `-incoming defer` added: it is the same machine.
    let mut args: Vec<&String> = Vec::with_capacity(config.args.len());
    let mut iter = config.args.iter();
    while let Some(arg) = iter.next() {
        if arg == "-incoming" || arg == "--incoming" {
            iter.next();
        } else {
            args.push(arg);
        }
    }
    let material = format!(
        "qemu-machine state v{STATE_FORMAT}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{}\0{}\0{}\0{}",
        args,
        config.machine_type,
        config.console,
        config.accel.map(|a| a.as_arg()),
        devices,
        config.builtin_guest,
        config.guest_agent,
        config.qtest,
        config.add_fds.len(),
    );
    blake3::hash(material.as_bytes()).to_hex().to_string()
}

impl MachineBuilder {
    /// Why QEMU could not save the state of a machine of this configuration (see
    /// [`Machine::save_state`]), one sentence each; empty when it can.
    ///
    /// ```
    /// use qemu_machine::{devices::Share9p, Machine};
    ///
    /// let dir = std::env::temp_dir();
    /// let builder = Machine::builder("qemu-system-x86_64").share_9p(Share9p::new("data", &dir));
    /// assert!(builder.migration_blockers()[0].contains("9p"));
    /// ```
    pub fn migration_blockers(&self) -> Vec<String> {
        migration_blockers(&self.config)
    }
}

/// `major.minor.micro` from `query-version`.
fn qemu_version(version: &Value) -> (u64, u64, u64, String) {
    let part = |k: &str| version["qemu"][k].as_u64().unwrap_or(0);
    let (major, minor, micro) = (part("major"), part("minor"), part("micro"));
    (major, minor, micro, format!("{major}.{minor}.{micro}"))
}

/// Puts a machine's configuration back when dropped: the configuration a launch ran with
/// stays the machine's even when that launch's future is dropped.
struct RestoreConfig<'a> {
    vm: &'a mut Machine,
    original: Option<MachineBuilder>,
}

impl Drop for RestoreConfig<'_> {
    fn drop(&mut self) {
        if let Some(original) = self.original.take() {
            *self.vm.config_mut() = original;
        }
    }
}

/// Launches `vm` with `for_this_launch` instead of its configuration, which is left as it
/// was (also when this future is dropped).
pub(crate) async fn launch_with(vm: &mut Machine, for_this_launch: MachineBuilder) -> Result<()> {
    let original = std::mem::replace(vm.config_mut(), for_this_launch);
    let guard = RestoreConfig {
        vm,
        original: Some(original),
    };
    guard.vm.launch().await
}

impl Machine {
    /// Saves the machine's whole state (RAM, CPUs, devices) to `path`, for
    /// [`launch_restored`](Self::launch_restored). The guest is paused first and stays
    /// paused afterwards (QEMU's `postmigrate`): shut the machine down, or `cont` to go on.
    /// The file appears at `path` atomically (0600) once complete; a failed save leaves
    /// nothing behind and resumes a guest that ran; the migration bandwidth limit it lifts
    /// is put back. If this future is dropped mid-save, the partial file is removed but the
    /// guest stays paused (`cont` resumes it).
    ///
    /// See the [module docs](crate::saved_state) for an example and for what is refused.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when the machine has a device QEMU cannot migrate (9p,
    /// virtiofs) or a `snapshot=on` disk the guest wrote to; [`ErrorKind::Migration`] when
    /// QEMU's migration fails; [`ErrorKind::Timeout`] when it does not finish within
    /// `timeout` (it is cancelled); [`ErrorKind::Io`] when the file cannot be written;
    /// otherwise as [`Machine::cmd`].
    pub async fn save_state(
        &mut self,
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<StateInfo> {
        let path = path.as_ref();
        let name = self.name().to_string();
        let deadline = crate::deadline::deadline_after(timeout);
        let refuse = |why: String| Error::new(name.clone(), ErrorKind::Config(why));
        let blockers = migration_blockers(&self.config);
        if !blockers.is_empty() {
            return Err(refuse(format!(
                "cannot save the state of this machine: {}",
                blockers.join("; ")
            )));
        }
        let stats = self.cmd("query-blockstats", json!({})).await?;
        let mut disks = Vec::new();
        for (id, file, writable, snapshot) in self.config.devices.disk_files() {
            if !writable {
                continue;
            }
            if !snapshot {
                disks.push(file.to_path_buf());
                continue;
            }
            let written = stats.as_array().into_iter().flatten().any(|s| {
                s["device"] == id.as_str() && s["stats"]["wr_operations"].as_u64().unwrap_or(0) > 0
            });
            if written {
                return Err(refuse(format!(
                    "cannot save the state of this machine: the guest wrote to the snapshot=on \
                     disk {}, and those writes live in a temporary overlay that dies with this \
                     QEMU, so a restored guest would find its disk changed under it; attach it \
                     writable (restores get overlays of their own) or read-only",
                    file.display()
                )));
            }
        }
        let version = self.cmd("query-version", json!({})).await?;
        let was_running = self.cmd("query-status", json!({})).await?["running"] == true;
        if was_running {
            self.cmd("stop", json!({})).await?;
        }
        // save_paused lifts the migration bandwidth limit; the machine gets its own back.
        let bandwidth = self
            .cmd("query-migrate-parameters", json!({}))
            .await?
            .get("max-bandwidth")
            .and_then(Value::as_u64);
        let started = Instant::now();
        let result = self
            .save_paused(path, &version, was_running, disks, deadline, timeout)
            .await;
        if let Some(bandwidth) = bandwidth {
            let _ = self
                .cmd(
                    "migrate-set-parameters",
                    json!({"max-bandwidth": bandwidth}),
                )
                .await;
        }
        match result {
            Ok(mut info) => {
                info.save_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::debug!(machine = %name, path = %path.display(), bytes = info.file_bytes(), ms = info.save_ms, "state saved");
                Ok(info)
            }
            Err(e) => {
                if was_running && self.is_running() {
                    let _ = self.cmd("cont", json!({})).await;
                }
                Err(e)
            }
        }
    }

    async fn save_paused(
        &mut self,
        path: &Path,
        version: &Value,
        was_running: bool,
        disks: Vec<PathBuf>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<StateInfo> {
        let (major, _minor, _, version_text) = qemu_version(version);
        let (file, mut partial) = create_partial(path)?;
        let partial_path = partial.path().to_path_buf();
        let io = |e| Error::io(format!("writing {}", partial_path.display()), e);
        // Zeros until the end: a save that does not finish has no magic.
        file.write_all_at(&[0; HEADER_BYTES as usize], 0)
            .map_err(io)?;
        let disks = disks
            .iter()
            .map(|d| DiskStamp::of(d))
            .collect::<Result<Vec<_>>>()?;
        self.cmd(
            "migrate-set-parameters",
            json!({"max-bandwidth": MAX_BANDWIDTH}),
        )
        .await?;
        // QEMU's own descriptor: write-only (QEMU 9's fdsets match the access mode).
        let for_qemu = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&partial_path)
            .map_err(io)?;
        let (uri, fdset) = self.hand_stream(for_qemu, major, &partial_path).await?;
        let migrated = self.migrate_out(&uri, deadline, timeout).await;
        if let Some(set) = fdset {
            let _ = self.cmd("remove-fd", json!({"fdset-id": set})).await;
        }
        migrated?;
        let stream_bytes = file
            .metadata()
            .map_err(io)?
            .len()
            .saturating_sub(HEADER_BYTES);
        let hash_file = file.try_clone().map_err(io)?;
        let stream_blake3 =
            tokio::task::spawn_blocking(move || hash_stream(&hash_file, stream_bytes))
                .await
                .map_err(|e| Error::io("hashing the state", std::io::Error::other(e)))?
                .map_err(io)?;
        let info = StateInfo {
            format: STATE_FORMAT,
            qemu_version: version_text,
            fingerprint: fingerprint(&self.config),
            stream_bytes,
            stream_blake3,
            was_running,
            disks,
            save_ms: 0,
        };
        file.write_all_at(&header_bytes(&info)?, 0).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial_path, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", partial_path.display(), path.display()),
                e,
            )
        })?;
        partial.keep();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself survives a crash only once the directory is synced.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(info)
    }

    /// Starts the outgoing migration and waits for it; cancels it on the deadline.
    async fn migrate_out(&mut self, uri: &str, deadline: Instant, timeout: Duration) -> Result<()> {
        self.cmd("migrate", json!({"uri": uri})).await?;
        loop {
            let info = self.cmd("query-migrate", json!({})).await?;
            match info["status"].as_str().unwrap_or_default() {
                "completed" => return Ok(()),
                status @ ("failed" | "cancelled") => {
                    let why = info["error-desc"].as_str().unwrap_or(status);
                    return Err(Error::new(
                        self.name().to_string(),
                        ErrorKind::Migration {
                            message: format!("saving the state failed: {why}"),
                        },
                    ));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let _ = self.cmd("migrate_cancel", json!({})).await;
                return Err(Error::new(
                    self.name().to_string(),
                    ErrorKind::Timeout {
                        awaited: "the state to be saved".into(),
                        after: timeout,
                        seen: format!("last query-migrate: {info}"),
                    },
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Launches the machine from a state saved by [`save_state`](Self::save_state) of a
    /// machine with the same configuration (this one's), and resumes the guest where it
    /// was saved (if it ran then). Console, QMP, events and the guest agent work as after
    /// [`launch`](Self::launch); the console shows only what the guest writes from now on.
    ///
    /// Writable typed disks are attached with `snapshot=on` for this run (see the
    /// [module docs](crate::saved_state)); the configuration itself is left as it was.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Migration`] when the file is not a whole state file (truncated,
    /// corrupt: checked before QEMU starts, or before it reads the stream), was saved by
    /// another QEMU version, or QEMU cannot load it (QEMU's words included);
    /// [`ErrorKind::StaleState`] when it was saved from another configuration or a disk
    /// changed since; [`ErrorKind::Timeout`] past `timeout`; otherwise as
    /// [`launch`](Self::launch). On any error QEMU is killed and reaped, and its run dir
    /// removed.
    pub async fn launch_restored(
        &mut self,
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<StateInfo> {
        let path = path.as_ref();
        let deadline = crate::deadline::deadline_after(timeout);
        let (info, file) = open_state(path)?;
        let original = self.config().clone();
        let config = &original.config;
        if fingerprint(config) != info.fingerprint {
            return Err(Error::from(ErrorKind::StaleState(format!(
                "{} was saved from a machine configured differently (machine type, \
                 accelerator, memory, devices or arguments); restore it with the \
                 configuration it was saved with",
                path.display()
            ))));
        }
        for stamp in &info.disks {
            let now = DiskStamp::of(&stamp.path)?;
            if now != *stamp {
                return Err(Error::from(ErrorKind::StaleState(format!(
                    "the disk {} changed since {} was saved (size or modification time): \
                     the saved guest would find different data under it",
                    stamp.path.display(),
                    path.display()
                ))));
            }
        }
        let mut restore = original.clone().args(["-incoming", "defer"]);
        restore.config.devices.snapshot_writable_disks();
        // The hash is checked while QEMU starts.
        let hash_file = file
            .try_clone()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let stream_bytes = info.stream_bytes;
        let hash = tokio::task::spawn_blocking(move || hash_stream(&hash_file, stream_bytes));
        launch_with(self, restore).await?;
        let finished = self
            .finish_restore(path, &info, file, hash, deadline, timeout)
            .await;
        match finished {
            Ok(()) => Ok(info),
            Err(e) => {
                let _ = self.kill().await;
                Err(e)
            }
        }
    }

    async fn finish_restore(
        &mut self,
        path: &Path,
        info: &StateInfo,
        file: File,
        hash: tokio::task::JoinHandle<std::io::Result<String>>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let name = self.name().to_string();
        let fail = |message: String| Error::new(name.clone(), ErrorKind::Migration { message });
        let (major, _, _, version) = qemu_version(&self.cmd("query-version", json!({})).await?);
        if version != info.qemu_version {
            return Err(fail(format!(
                "{} was saved by QEMU {}, and this is QEMU {version}: a state loads only in \
                 the version that saved it",
                path.display(),
                info.qemu_version
            )));
        }
        let hashed = hash
            .await
            .map_err(|e| fail(format!("hashing {} failed: {e}", path.display())))?
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if hashed != info.stream_blake3 {
            return Err(corrupt(
                path,
                "its stream does not match the checksum in its header (the file is corrupt)",
            ));
        }
        let (uri, fdset) = self.hand_stream(file, major, path).await?;
        let loading = async {
            self.cmd("migrate-incoming", json!({"uri": uri})).await?;
            loop {
                let status = self.cmd("query-status", json!({})).await?;
                let status = status["status"].as_str().unwrap_or_default().to_string();
                if status != "inmigrate" {
                    return Ok::<_, Error>(status);
                }
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        name.clone(),
                        ErrorKind::Timeout {
                            awaited: format!("QEMU to load {}", path.display()),
                            after: timeout,
                            seen: "still inmigrate".into(),
                        },
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        };
        let status = loading.await.map_err(|e| match e.kind() {
            ErrorKind::Exited(_) => fail(format!("QEMU could not load {}: {e}", path.display())),
            _ => e,
        })?;
        if let Some(set) = fdset {
            let _ = self.cmd("remove-fd", json!({"fdset-id": set})).await;
        }
        if status != "paused" && status != "running" {
            return Err(fail(format!(
                "QEMU did not take over the state in {}: it is {status}",
                path.display()
            )));
        }
        if info.was_running && status == "paused" {
            self.cmd("cont", json!({})).await?;
        }
        Ok(())
    }
}

impl Machine {
    /// Hands QEMU `file` (a state file) and returns the migration URI of its stream, which
    /// starts after the header, and the fdset to remove afterwards: `add-fd` +
    /// `file:/dev/fdset/N,offset=...` on QEMU 9.0 and later (10.0 deprecates `fd:` to a
    /// file), `getfd` + `fd:NAME` from the header's end before (7.2 has no `file:` URI).
    async fn hand_stream(
        &mut self,
        mut file: File,
        major: u64,
        path: &Path,
    ) -> Result<(String, Option<u64>)> {
        if major >= 9 {
            let added = self
                .request(qmp::Request::new("add-fd").fd(file.into()))
                .await?;
            let set = added["fdset-id"].as_u64().unwrap_or(0);
            return Ok((
                format!("file:/dev/fdset/{set},offset={HEADER_BYTES}"),
                Some(set),
            ));
        }
        file.seek(SeekFrom::Start(HEADER_BYTES))
            .map_err(|e| Error::io(format!("positioning {}", path.display()), e))?;
        self.request(
            qmp::Request::new("getfd")
                .arguments(json!({"fdname": FD_NAME}))
                .fd(file.into()),
        )
        .await?;
        Ok((format!("fd:{FD_NAME}"), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_virtiofs_shares_block_saving() {
        let builder = crate::Machine::builder("q")
            .share_virtiofs(crate::virtiofs::VirtioFs::new("src", "/srv/src"));
        let blockers = builder.migration_blockers();
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(
            blockers[0].contains("virtiofs share \"src\""),
            "{blockers:?}"
        );
    }

    #[test]
    fn raw_9p_and_virtiofs_arguments_block_saving() {
        let builder = Machine::builder("qemu-system-x86_64").args([
            "-device",
            "vhost-user-fs-pci,chardev=fs,tag=t",
            "-virtfs",
            "local,path=/srv,mount_tag=m,security_model=none",
        ]);
        let blockers = builder.migration_blockers();
        assert_eq!(blockers.len(), 2, "{blockers:?}");
        assert!(blockers[0].contains("virtiofs"));
        assert!(blockers[1].contains("9p"));
        assert!(Machine::builder("q")
            .args(["-m", "1G"])
            .migration_blockers()
            .is_empty());
        let typed =
            Machine::builder("q").share_virtiofs(crate::virtiofs::VirtioFs::new("t", "/srv"));
        assert!(typed.migration_blockers()[0].contains("virtiofs share \"t\""));
    }

    #[test]
    fn the_fingerprint_ignores_what_a_restore_adds() {
        let builder = Machine::builder("q").args(["-m", "1G"]);
        let restored = builder.clone().args(["-incoming", "defer"]);
        assert_eq!(fingerprint(&builder.config), fingerprint(&restored.config));
        let other = builder.clone().args(["-smp", "2"]);
        assert_ne!(fingerprint(&builder.config), fingerprint(&other.config));
    }
}
