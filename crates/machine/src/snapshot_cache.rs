//! A cache of booted guests for test suites: boot once, save the state, restore it for
//! every later use (see [`saved_state`]).
//!
//! An entry's key is a BLAKE3 hash of the launch configuration (binary, machine, devices,
//! raw arguments), of the readiness pattern, of the QEMU binary's identity (path, size,
//! modification time) and of the *contents* of every file the launch reads: kernel,
//! initrd, disks, BIOS, given as typed devices or as raw `-kernel`/`-initrd`/`-bios`/
//! `-dtb`/`-drive file=` arguments. Change any of them and the key changes: the next
//! launch builds a new entry. (Contents are hashed once per process per file size and
//! modification time.)
//!
//! Building takes an exclusive `flock` on `KEY.lock` in the cache directory, so several
//! processes asking for the same missing key at once boot it once: the others wait for the
//! lock and then find the entry. Entries appear by atomic rename, so a reader never sees a
//! half-written one, and a reader needs no lock: an entry evicted while it is restored
//! stays readable through its open descriptor.
//!
//! The cache directory is `$QEMU_MACHINE_SNAPSHOT_CACHE` when set, else
//! `$XDG_CACHE_HOME/qemu-machine/snapshots`, else `~/.cache/qemu-machine/snapshots`.
//! After each build, the least recently used entries (a hit refreshes an entry's
//! modification time) are removed until the entries take at most the size limit:
//! [`DEFAULT_MAX_BYTES`], or `$QEMU_MACHINE_SNAPSHOT_CACHE_MAX_MIB`, or
//! [`SnapshotCache::max_bytes`]. `qemu-machine cache list` and `qemu-machine cache clean`
//! show and empty it.
//!
//! While the entry is built, writable disks are attached `snapshot=on`: the cache never
//! writes to them (and refuses to save a guest that wrote to them before it was ready).
//!
//! ```no_run
//! # async fn f() -> qemu_machine::Result<()> {
//! use std::time::Duration;
//! use qemu_machine::snapshot_cache::SnapshotCache;
//! use qemu_machine::{Machine, RunOptions};
//!
//! let cache = SnapshotCache::from_env()?;
//! let builder = Machine::builder("qemu-system-x86_64")
//!     .machine_type("pc")
//!     .console(None, 0)
//!     .args(["-kernel", "vmlinuz", "-initrd", "initrd.gz", "-append", "console=ttyS0"]);
//! let mut vm = Machine::new(builder);
//! // The first time: boots, waits for "guest# ", saves. Later: restores in a fraction of a second.
//! cache.launch(&mut vm, "guest# ", Duration::from_secs(120)).await?;
//! let done = vm.console()?.run("uname -r", RunOptions::new(Duration::from_secs(10))).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::config::MachineBuilder;
use crate::console::Pattern;
use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;
use crate::saved_state::{self, StateInfo};

/// The environment variable naming the cache directory.
pub const CACHE_DIR_ENV: &str = "QEMU_MACHINE_SNAPSHOT_CACHE";
/// The environment variable with the size limit, in MiB.
pub const CACHE_MAX_ENV: &str = "QEMU_MACHINE_SNAPSHOT_CACHE_MAX_MIB";
/// The default size limit: 4 GiB (a 256 MiB Linux guest takes ~100 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// How long a launch waits for another process building the same entry.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a waiting launch tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// How [`SnapshotCache::launch`] got its machine running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    /// Restored from an entry: no boot.
    Hit,
    /// Booted, saved as a new entry, then restored from it.
    Built,
}

/// One entry of the cache.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// Its state file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was last built or restored.
    pub last_used: SystemTime,
    /// Its header, when it reads.
    pub info: Option<StateInfo>,
}

/// The size bound `$QEMU_MACHINE_SNAPSHOT_CACHE_MAX_MIB` asks for, in bytes, or
/// [`DEFAULT_MAX_BYTES`].
///
/// ```
/// assert!(qemu_machine::snapshot_cache::max_bytes_from_env() > 0);
/// ```
pub fn max_bytes_from_env() -> u64 {
    std::env::var(CACHE_MAX_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_MAX_BYTES, |mib| mib.saturating_mul(1 << 20))
}

/// A snapshot cache in one directory. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    dir: PathBuf,
    max_bytes: u64,
    lock_timeout: Duration,
}

/// The default cache directory (see the [module docs](self)); `None` when neither
/// `$QEMU_MACHINE_SNAPSHOT_CACHE`, `$XDG_CACHE_HOME` nor `$HOME` is set.
///
/// ```
/// let dir = qemu_machine::snapshot_cache::default_dir();
/// ```
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    var(CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("qemu-machine/snapshots")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/qemu-machine/snapshots")))
}

impl SnapshotCache {
    /// A cache in `dir` (created when first built into), with the size limit from
    /// `$QEMU_MACHINE_SNAPSHOT_CACHE_MAX_MIB` or [`DEFAULT_MAX_BYTES`].
    ///
    /// ```
    /// let cache = qemu_machine::snapshot_cache::SnapshotCache::new("/tmp/snapshots");
    /// assert_eq!(cache.dir(), std::path::Path::new("/tmp/snapshots"));
    /// ```
    pub fn new(dir: impl Into<PathBuf>) -> SnapshotCache {
        SnapshotCache {
            dir: dir.into(),
            max_bytes: max_bytes_from_env(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// The cache in [`default_dir`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when no directory can be found.
    pub fn from_env() -> Result<SnapshotCache> {
        default_dir().map(SnapshotCache::new).ok_or_else(|| {
            Error::config(format!(
                "no snapshot cache directory: set {CACHE_DIR_ENV}, XDG_CACHE_HOME or HOME"
            ))
        })
    }

    /// The size limit of the entries together.
    ///
    /// ```
    /// let cache = qemu_machine::snapshot_cache::SnapshotCache::new("/tmp/s").max_bytes(1 << 30);
    /// ```
    pub fn max_bytes(mut self, bytes: u64) -> SnapshotCache {
        self.max_bytes = bytes;
        self
    }

    /// How long a launch waits for another process that builds the same entry (default
    /// 10 minutes).
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = qemu_machine::snapshot_cache::SnapshotCache::new("/tmp/s")
    ///     .lock_timeout(Duration::from_secs(60));
    /// ```
    pub fn lock_timeout(mut self, timeout: Duration) -> SnapshotCache {
        self.lock_timeout = timeout;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a configuration waited for until `ready` (a substring, or a
    /// [`Pattern`]) shows on its console.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when a file the launch reads cannot be read.
    pub fn key(&self, builder: &MachineBuilder, ready: impl Into<Pattern>) -> Result<String> {
        let config = &builder.config;
        let ready = match ready.into() {
            Pattern::Substring(bytes) => [b"substring:".as_slice(), &bytes].concat(),
            Pattern::Regex(regex) => format!("regex:{}", regex.as_str()).into_bytes(),
        };
        let mut hasher = blake3::Hasher::new();
        let mut add = |part: &[u8]| {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        };
        add(b"qemu-machine snapshot cache v1");
        add(env!("CARGO_PKG_VERSION").as_bytes());
        add(saved_state::fingerprint(config).as_bytes());
        add(&ready);
        add(binary_identity(&config.binary).as_bytes());
        let mut inputs: Vec<PathBuf> = config
            .devices
            .input_files()
            .into_iter()
            .map(Path::to_path_buf)
            .collect();
        inputs.extend(files_in_args(&config.args));
        for file in inputs {
            add(file.as_os_str().as_encoded_bytes());
            add(content_hash(&file)?.as_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    fn state_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.state"))
    }

    /// The entry's state file for this configuration, if there is one.
    ///
    /// # Errors
    ///
    /// As [`key`](Self::key).
    pub fn lookup(
        &self,
        builder: &MachineBuilder,
        ready: impl Into<Pattern>,
    ) -> Result<Option<PathBuf>> {
        let path = self.state_path(&self.key(builder, ready)?);
        Ok(path.is_file().then_some(path))
    }

    /// Launches `vm` from the cache: restores its entry when there is one ([`Warm::Hit`]);
    /// otherwise boots it, waits for `ready` on its console, saves the entry, shuts it
    /// down and restores it ([`Warm::Built`]). `timeout` bounds the boot and each
    /// save or restore. An entry that cannot be restored (a damaged file, another QEMU
    /// build behind the same path, a disk touched since) is rebuilt.
    ///
    /// # Errors
    ///
    /// As [`Machine::launch`], [`Machine::save_state`] and
    /// [`Machine::launch_restored`]; [`ErrorKind::Console`]/[`ErrorKind::Timeout`] when
    /// `ready` does not show; [`ErrorKind::Timeout`] when another process holds the
    /// entry's lock past [`lock_timeout`](Self::lock_timeout). QEMU is never left running
    /// on an error.
    pub async fn launch(
        &self,
        vm: &mut Machine,
        ready: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<Warm> {
        let ready = ready.into();
        // Hashing the inputs reads whole disk images: off the async workers, so that the
        // caller's other work (a signal handler, say) goes on, and this future can be
        // dropped meanwhile.
        let (cache, builder, pattern) = (self.clone(), vm.config().clone(), ready.clone());
        let key = tokio::task::spawn_blocking(move || cache.key(&builder, pattern))
            .await
            .map_err(|e| Error::io("hashing the launch's inputs", std::io::Error::other(e)))??;
        let path = self.state_path(&key);
        // The entry (by inode) that failed to restore here, if one did.
        let mut unusable = None;
        if let Ok(meta) = std::fs::metadata(&path) {
            match self.restore(vm, &path, timeout).await {
                Ok(()) => return Ok(Warm::Hit),
                // Damaged, from another QEMU build, or a disk touched since: rebuild.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Migration { .. } | ErrorKind::StaleState(_)
                    ) =>
                {
                    tracing::warn!(path = %path.display(), "cache entry unusable, rebuilding: {e}");
                    unusable = Some(meta.ino());
                }
                Err(e) => return Err(e),
            }
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let lock = self.lock(&key).await?;
        if let Ok(meta) = std::fs::metadata(&path) {
            // Another process built it while this one waited (or rebuilt the bad one).
            if Some(meta.ino()) != unusable && saved_state::read_info(&path).is_ok() {
                // Restored under the lock: eviction skips locked entries.
                self.restore(vm, &path, timeout).await?;
                drop(lock);
                return Ok(Warm::Hit);
            }
            let _ = std::fs::remove_file(&path);
        }
        let built = self.build(vm, &path, ready, timeout).await;
        if let Err(e) = built {
            drop(lock);
            let _ = vm.kill().await;
            return Err(e);
        }
        // Under the lock, which `remove` respects: the entry just built is never evicted
        // before it is restored.
        if let Err(e) = self.evict() {
            tracing::warn!(dir = %self.dir.display(), "evicting old snapshots failed: {e}");
        }
        vm.launch_restored(&path, timeout).await?;
        drop(lock);
        Ok(Warm::Built)
    }

    async fn restore(&self, vm: &mut Machine, path: &Path, timeout: Duration) -> Result<()> {
        // Least recently used is by modification time: a hit refreshes it.
        if let Ok(file) = qmp::fsutil::open_regular(path) {
            let _ = file.set_modified(SystemTime::now());
        }
        vm.launch_restored(path, timeout).await.map(drop)
    }

    async fn build(
        &self,
        vm: &mut Machine,
        path: &Path,
        ready: Pattern,
        timeout: Duration,
    ) -> Result<()> {
        let mut build = vm.config().clone();
        build.config.devices.snapshot_writable_disks();
        saved_state::launch_with(vm, build).await?;
        tracing::debug!(path = %path.display(), "snapshot cache: booting to build an entry");
        vm.console()?.expect(ready, timeout).await?;
        vm.save_state(path, timeout).await?;
        vm.shutdown().await
    }

    /// The exclusive lock on `KEY.lock`, waited for (bounded).
    async fn lock(&self, key: &str) -> Result<Flock<File>> {
        let lock_path = self.dir.join(format!("{key}.lock"));
        let deadline = crate::deadline::deadline_after(self.lock_timeout);
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&lock_path)
                .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))
        };
        let mut file = open()?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                // Still the file at that name? `remove` and `clean` unlink lock files: a lock
                // on an unlinked one would not keep out a process that made a new one.
                Ok(lock) if same_file(&lock, &lock_path) => return Ok(lock),
                Ok(stale) => {
                    drop(stale);
                    file = open()?;
                }
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => file = back,
                Err((_, errno)) => {
                    return Err(Error::io(
                        format!("locking {}", lock_path.display()),
                        errno.into(),
                    ))
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ErrorKind::Timeout {
                    awaited: format!("the lock on {}", lock_path.display()),
                    after: self.lock_timeout,
                    seen: "another process is building this entry".into(),
                }
                .into());
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// The entries, least recently used first.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the directory cannot be read (a missing one is empty).
    pub fn list(&self) -> Result<Vec<Entry>> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", self.dir.display()), e)),
        };
        let mut entries = Vec::new();
        for dirent in read.flatten() {
            let name = dirent.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".state").filter(|k| !k.starts_with('.')) else {
                continue;
            };
            let Ok(meta) = dirent.metadata() else {
                continue;
            };
            entries.push(Entry {
                key: key.to_string(),
                path: dirent.path(),
                bytes: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                info: saved_state::read_info(&dirent.path()).ok(),
            });
        }
        entries.sort_by_key(|e| e.last_used);
        Ok(entries)
    }

    /// Removes `entry` unless it is being built (its lock is held); true when removed.
    fn remove(&self, key: &str) -> bool {
        let lock_path = self.dir.join(format!("{key}.lock"));
        let lock = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .ok()
            .map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock));
        if let Some(Err(_)) = lock {
            return false;
        }
        let removed = std::fs::remove_file(self.state_path(key)).is_ok();
        let _ = std::fs::remove_file(&lock_path);
        removed
    }

    /// Removes every entry not being built right now, the locks and what interrupted
    /// builds left; returns how many entries went.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub fn clean(&self) -> Result<usize> {
        let removed = self.list()?.iter().filter(|e| self.remove(&e.key)).count();
        // Partial files of builds that died (their lock is free), and orphan locks.
        if let Ok(read) = std::fs::read_dir(&self.dir) {
            for dirent in read.flatten() {
                let name = dirent.file_name().to_string_lossy().into_owned();
                if let Some(key) = name
                    .strip_prefix('.')
                    .and_then(|n| n.split_once(".state.partial-"))
                    .map(|(k, _)| k.to_string())
                    .or_else(|| name.strip_suffix(".lock").map(str::to_string))
                {
                    let lock_path = self.dir.join(format!("{key}.lock"));
                    let free = match File::open(&lock_path) {
                        Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok(),
                        Err(_) => true,
                    };
                    if free {
                        let _ = std::fs::remove_file(dirent.path());
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Removes the least recently used entries until the rest take at most the size
    /// limit (the newest stays, whatever its size); returns how many went.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub fn evict(&self) -> Result<usize> {
        let entries = self.list()?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut removed = 0;
        for entry in entries.iter().take(entries.len().saturating_sub(1)) {
            if total <= self.max_bytes {
                break;
            }
            if self.remove(&entry.key) {
                total = total.saturating_sub(entry.bytes);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Whether the open `file` is the one at `path` now (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// The binary as found on `$PATH`, its size and modification time; and, for a small
/// file (a wrapper script), its contents.
fn binary_identity(binary: &str) -> String {
    let found = if binary.contains('/') {
        Some(PathBuf::from(binary))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(binary))
                .find(|p| p.is_file())
        })
    };
    let Some(path) = found else {
        return binary.to_string();
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let Ok(meta) = std::fs::metadata(&path) else {
        return path.display().to_string();
    };
    let mut identity = format!(
        "{}\0{}\0{}.{}",
        path.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    if meta.len() < 64 * 1024 {
        if let Ok(text) = std::fs::read(&path) {
            identity.push_str(&String::from_utf8_lossy(&text));
        }
    }
    identity
}

/// The files raw arguments make QEMU read.
fn files_in_args(args: &[String]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let Some(value) = args.get(i + 1) else { break };
        match arg.trim_start_matches('-') {
            "kernel" | "initrd" | "bios" | "dtb" | "hda" | "hdb" | "cdrom" => {
                files.push(PathBuf::from(value));
            }
            "drive" | "blockdev" => {
                // `,,` is a comma inside a value.
                let unescaped = value.replace(",,", "\u{0}");
                for option in unescaped.split(',') {
                    if let Some(file) = option
                        .strip_prefix("file=")
                        .or_else(|| option.strip_prefix("filename="))
                    {
                        files.push(PathBuf::from(file.replace('\u{0}', ",")));
                    }
                }
            }
            _ => {}
        }
    }
    files
}

/// The BLAKE3 hash of a file's contents, computed once per process per (path, size,
/// modification time, inode).
fn content_hash(path: &Path) -> Result<String> {
    /// A file as seen by `stat`: path, size, modification time, inode.
    type FileId = (PathBuf, u64, i64, i64, u64);
    static MEMO: OnceLock<Mutex<HashMap<FileId, String>>> = OnceLock::new();
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let meta = std::fs::metadata(path).map_err(io)?;
    let id = (
        path.to_path_buf(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino(),
    );
    let memo = MEMO.get_or_init(Default::default);
    if let Some(hash) = qmp::sync::lock_unpoisoned(memo).get(&id) {
        return Ok(hash.clone());
    }
    let file = qmp::fsutil::open_regular(path).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(io)?;
    let hash = hasher.finalize().to_hex().to_string();
    qmp::sync::lock_unpoisoned(memo).insert(id, hash.clone());
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_in_raw_arguments() {
        let args: Vec<String> = [
            "-kernel",
            "/k",
            "-m",
            "1G",
            "-drive",
            "file=/a,,b.img,if=virtio",
            "-initrd",
            "/i",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            files_in_args(&args),
            [
                PathBuf::from("/k"),
                PathBuf::from("/a,b.img"),
                PathBuf::from("/i")
            ]
        );
    }

    #[test]
    fn eviction_keeps_the_newest_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path()).max_bytes(250);
        for (i, key) in ["old", "mid", "new"].iter().enumerate() {
            let path = dir.path().join(format!("{key}.state"));
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            File::open(&path).unwrap().set_modified(when).unwrap();
        }
        assert_eq!(cache.evict().unwrap(), 1);
        let keys: Vec<String> = cache.list().unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["mid", "new"]);
        assert_eq!(cache.clean().unwrap(), 2);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
