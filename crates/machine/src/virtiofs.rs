//! Host directories shared over virtiofs, each served by a `virtiofsd` of its own that is
//! started before QEMU, contained like QEMU (its own process group, killed when we die) and
//! killed and reaped with the machine.
//!
//! The daemon gets a listening socket we bound in the run dir, by number (`--fd`), and QEMU
//! gets a socket already connected to it (`fd=`): neither waits for the other to create a
//! path, and the socket file is removed before either starts. QEMU's C `virtiofsd` (shipped
//! with QEMU up to 7.2) has no read-only option, so a read-only share is served from a
//! read-only bind mount in a mount namespace of the daemon's own, which needs
//! `CAP_SYS_ADMIN` (the namespace sandbox of the C daemon needs it anyway).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::spawn::{kill_contained, reap_child_within, spawn_command, ChildIo, Contained, Program};

/// The longest virtiofs tag the Linux driver accepts.
const MAX_TAG_BYTES: usize = 36;

/// How long dropping a daemon waits for it to be reaped after `SIGKILL`.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where [`find_virtiofsd`] looks, after `$QEMU_MACHINE_VIRTIOFSD` and `virtiofsd` on `PATH`:
/// the Rust daemon's Debian/Fedora place, then the C daemon's places in QEMU's packages.
const KNOWN_PLACES: [&str; 3] = [
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/lib/virtiofsd",
];

/// A host directory shared with the guest over virtiofs (`vhost-user-fs-pci`), read-only
/// unless asked. In a Linux guest: `mount -t virtiofs TAG /mnt`.
///
/// The machine's memory becomes a shared memfd (`-object memory-backend-memfd,share=on`
/// with `-numa node,memdev=...`), as vhost-user needs; its size is
/// [`memory_mib`](crate::MachineBuilder::memory_mib), or 128 MiB when that is not set.
///
/// ```
/// use qemu_machine::virtiofs::VirtioFs;
///
/// let share = VirtioFs::new("src", "/home/me/src").writable(true);
/// let builder = qemu_machine::Machine::builder("qemu-system-x86_64").share_virtiofs(share);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioFs {
    pub(crate) tag: String,
    pub(crate) path: PathBuf,
    pub(crate) writable: bool,
    pub(crate) daemon: Option<PathBuf>,
}

impl VirtioFs {
    /// Shares `path` under the mount tag `tag`, read-only, served by the `virtiofsd` that
    /// [`find_virtiofsd`] finds at launch.
    ///
    /// ```
    /// let share = qemu_machine::virtiofs::VirtioFs::new("data", "/srv/data");
    /// ```
    pub fn new(tag: impl Into<String>, path: impl Into<PathBuf>) -> VirtioFs {
        VirtioFs {
            tag: tag.into(),
            path: path.into(),
            writable: false,
            daemon: None,
        }
    }

    /// Lets the guest write to the share.
    ///
    /// ```
    /// let share = qemu_machine::virtiofs::VirtioFs::new("data", "/srv").writable(true);
    /// ```
    pub fn writable(mut self, writable: bool) -> VirtioFs {
        self.writable = writable;
        self
    }

    /// Serves the share with this `virtiofsd` binary instead of the one found on the system.
    ///
    /// ```
    /// let share = qemu_machine::virtiofs::VirtioFs::new("data", "/srv")
    ///     .daemon("/opt/virtiofsd/bin/virtiofsd");
    /// ```
    pub fn daemon(mut self, path: impl Into<PathBuf>) -> VirtioFs {
        self.daemon = Some(path.into());
        self
    }

    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// Checks what a launch would trip on; returns the daemon to run.
    pub(crate) fn validate(&self) -> Result<PathBuf> {
        if self.tag.is_empty() || self.tag.len() > MAX_TAG_BYTES {
            return Err(Error::config(format!(
                "virtiofs tag {:?} must have 1 to {MAX_TAG_BYTES} bytes",
                self.tag
            )));
        }
        if !self.path.is_dir() {
            return Err(Error::config(format!(
                "virtiofs share {}: {} is not a directory",
                self.tag,
                self.path.display()
            )));
        }
        // virtiofsd reads `-o source=...` as a comma-separated option list.
        if self.path.as_os_str().as_bytes().contains(&b',') {
            return Err(Error::config(format!(
                "virtiofs share {}: virtiofsd cannot take a path with a comma ({})",
                self.tag,
                self.path.display()
            )));
        }
        match &self.daemon {
            Some(daemon) if daemon.is_file() => Ok(daemon.clone()),
            Some(daemon) => Err(Error::config(format!(
                "virtiofs share {}: the daemon {} does not exist",
                self.tag,
                daemon.display()
            ))),
            None => find_virtiofsd().ok_or_else(|| {
                Error::config(format!(
                    "virtiofs share {} needs virtiofsd, and none was found (looked at \
                     $QEMU_MACHINE_VIRTIOFSD, PATH, {}): install it or name it with \
                     VirtioFs::daemon",
                    self.tag,
                    KNOWN_PLACES.join(", ")
                ))
            }),
        }
    }
}

/// The `virtiofsd` a share without [`VirtioFs::daemon`] uses: `$QEMU_MACHINE_VIRTIOFSD`,
/// else `virtiofsd` on `PATH`, else the places Debian and Fedora install the Rust daemon
/// and QEMU's packages installed the C one (`/usr/libexec/virtiofsd`,
/// `/usr/lib/qemu/virtiofsd`, `/usr/lib/virtiofsd`).
///
/// ```
/// match qemu_machine::virtiofs::find_virtiofsd() {
///     Some(path) => println!("virtiofs shares will use {}", path.display()),
///     None => println!("no virtiofsd here"),
/// }
/// ```
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QEMU_MACHINE_VIRTIOFSD").filter(|p| !p.is_empty()) {
        // Named but missing: not found, rather than a spawn error later.
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("virtiofsd"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| KNOWN_PLACES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The QEMU arguments for `shares`, given each share's chardev address (`fd=N` at launch).
pub(crate) fn args(
    shares: &[VirtioFs],
    memory_mib: Option<u64>,
    chardevs: &[String],
) -> Vec<String> {
    let mut argv = Vec::new();
    if shares.is_empty() {
        return argv;
    }
    let mib = match memory_mib {
        Some(mib) => mib,
        None => {
            argv.extend(["-m".to_string(), "128M".to_string()]);
            128
        }
    };
    argv.extend([
        "-object".to_string(),
        format!("memory-backend-memfd,id=qm-vfs-mem,size={mib}M,share=on"),
        "-numa".to_string(),
        "node,memdev=qm-vfs-mem".to_string(),
    ]);
    for (i, (share, chardev)) in shares.iter().zip(chardevs).enumerate() {
        argv.extend([
            "-chardev".to_string(),
            format!("socket,id=qm-vfs{i},{chardev}"),
            "-device".to_string(),
            format!(
                "vhost-user-fs-pci,chardev=qm-vfs{i},tag={}",
                crate::option_value::escape_option_value(&share.tag)
            ),
        ]);
    }
    argv
}

/// A running `virtiofsd`: killed and reaped (bounded) when dropped, which happens when the
/// machine's process is reaped, when its launch fails, or when the machine is dropped.
#[derive(Debug)]
pub(crate) struct Daemon(Contained);

impl Drop for Daemon {
    fn drop(&mut self) {
        let Contained { child, pid, link } = &mut self.0;
        kill_contained(*pid, link);
        if !reap_child_within(child, REAP_TIMEOUT) {
            tracing::warn!(pid = *pid, "virtiofsd not reaped after SIGKILL");
        }
    }
}

/// Starts one daemon per share; returns them and QEMU's connected socket ends, in order.
pub(crate) async fn start(
    shares: &[VirtioFs],
    run_dir: &Path,
) -> Result<(Vec<Daemon>, Vec<UnixStream>)> {
    let mut daemons = Vec::new();
    let mut qemu_ends = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let (daemon, qemu_end) = start_one(i, share, run_dir).await?;
        daemons.push(daemon);
        qemu_ends.push(qemu_end);
    }
    Ok((daemons, qemu_ends))
}

async fn start_one(i: usize, share: &VirtioFs, run_dir: &Path) -> Result<(Daemon, UnixStream)> {
    let program = share.validate()?;
    let source = share
        .path
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", share.path.display()), e))?;
    // What virtiofsd gets is the resolved path: a symlink may lead to a name with a comma.
    if source.as_os_str().as_bytes().contains(&b',') {
        return Err(Error::config(format!(
            "virtiofs share {}: virtiofsd cannot take a path with a comma ({})",
            share.tag,
            source.display()
        )));
    }
    let mut source_option = std::ffi::OsString::from("source=");
    source_option.push(source.as_os_str());
    let socket = run_dir.join(format!("virtiofs{i}.sock"));
    let io = |what: &str, e| Error::io(format!("virtiofs share {}: {what}", share.tag), e);
    // The run dir is 0700: nobody else can reach the socket in the moment it has a name.
    let listener = UnixListener::bind(&socket).map_err(|e| io("binding its socket", e))?;
    let qemu_end = UnixStream::connect(&socket).map_err(|e| io("connecting its socket", e));
    let _ = std::fs::remove_file(&socket);
    let qemu_end = qemu_end?;
    let log = crate::log_file::create_private(&run_dir.join(format!("virtiofsd{i}.log")))?;
    let listener = UnixListener::from(
        crate::spawn::above_stdio(listener.into())
            .map_err(|e| io("moving its socket above the standard streams", e))?,
    );
    let fd = listener.as_raw_fd();
    let mut argv = vec![program.as_os_str().to_os_string()];
    argv.push(format!("--fd={fd}").into());
    argv.push("-o".into());
    argv.push(source_option);
    let mut command = Program::new(argv)
        .stdout(ChildIo::Fd(
            log.try_clone()
                .map_err(|e| io("opening its log", e))?
                .into(),
        ))
        .stderr(ChildIo::Fd(log.into()));
    if !share.writable {
        command = command.read_only(&source);
    }
    let child = spawn_command(command, vec![OwnedFd::from(listener)], vec![fd])
        .await
        .map_err(|e| {
            let denied = matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES));
            let hint = if share.writable || !denied {
                ""
            } else {
                " (a read-only share needs CAP_SYS_ADMIN for its read-only mount; \
                 VirtioFs::writable(true) does not)"
            };
            Error::io(
                format!(
                    "virtiofs share {}: starting {}{hint}",
                    share.tag,
                    program.display()
                ),
                e,
            )
        })?;
    tracing::debug!(tag = share.tag, pid = child.pid, daemon = %program.display(), "virtiofsd started");
    Ok((Daemon(child), qemu_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_shared_memory_and_one_device_per_share() {
        let shares = [VirtioFs::new("a,b", "/x"), VirtioFs::new("c", "/y")];
        let argv = args(&shares, None, &["fd=7".into(), "fd=8".into()]);
        assert_eq!(
            argv.join(" "),
            "-m 128M -object memory-backend-memfd,id=qm-vfs-mem,size=128M,share=on \
             -numa node,memdev=qm-vfs-mem \
             -chardev socket,id=qm-vfs0,fd=7 -device vhost-user-fs-pci,chardev=qm-vfs0,tag=a,,b \
             -chardev socket,id=qm-vfs1,fd=8 -device vhost-user-fs-pci,chardev=qm-vfs1,tag=c"
        );
        assert!(args(&[], Some(64), &[]).is_empty());
        let sized = args(&shares[..1], Some(512), &["fd=3".into()]);
        assert!(!sized.contains(&"-m".to_string()));
        assert!(sized[1].contains("size=512M"));
    }

    #[test]
    fn validation_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (VirtioFs::new("", dir.path()), "1 to 36 bytes"),
            (VirtioFs::new("t".repeat(37), dir.path()), "1 to 36 bytes"),
            (
                VirtioFs::new("t", dir.path().join("missing")),
                "not a directory",
            ),
            (
                VirtioFs::new("t", dir.path()).daemon(dir.path().join("nope")),
                "does not exist",
            ),
        ];
        for (share, expected) in cases {
            let err = share.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let comma = dir.path().join("a,b");
        std::fs::create_dir(&comma).unwrap();
        let err = VirtioFs::new("t", &comma)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("comma"), "{err}");
    }
}
