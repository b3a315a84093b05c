//! What a machine is made of: every QEMUMachine constructor parameter and setter, as a
//! builder. The builder is plain data; `launch()` turns it into a process.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::accel::Accel;
use crate::error::{Error, Result};

/// Default deadline from spawn to QMP ready.
pub const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline for a graceful shutdown before SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest console buffer a machine accepts (256 MiB).
pub const MAX_CONSOLE_BUFFER: usize = 256 * 1024 * 1024;

/// Where the QMP monitor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Monitor {
    /// A socketpair; QEMU inherits its end (`-chardev socket,id=mon,fd=N`). The default: no
    /// socket file, no race, no path-length limit.
    Socketpair,
    /// We listen on this UNIX path and QEMU connects (`path=`). A relative path is taken
    /// inside the run dir and must stay there (no `..`).
    Unix(PathBuf),
    /// We listen on this TCP address and QEMU connects (`host=,port=`); port 0 picks one.
    /// Only loopback addresses, unless [`MachineBuilder::allow_remote_monitor`].
    Tcp(String, u16),
}

/// When to keep the run directory after shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepRunDir {
    /// Always remove it (the default).
    #[default]
    Never,
    /// Keep it when launch or shutdown failed, for diagnosis.
    OnFailure,
    /// Always keep it.
    Always,
}

/// The serial console (QEMUMachine's `set_console`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// `None`: `-serial chardev:console`; `Some(type)`: `-device TYPE,chardev=console`.
    pub device_type: Option<String>,
    /// How many `-serial null` come first (so the console is serial port N).
    pub index: usize,
}

/// A descriptor handed to QEMU with `-add-fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddFd {
    pub(crate) fd: RawFd,
    pub(crate) fdset: u32,
    pub(crate) opaque: String,
    pub(crate) opts: String,
}

/// Everything about a machine before it runs. Build with [`Machine::builder`](crate::Machine::builder).
///
/// ```
/// use qemu_machine::{Accel, Machine};
///
/// let config = Machine::builder("qemu-system-x86_64")
///     .name("web1")
///     .machine_type("pc")
///     .accel(Accel::Tcg)
///     .console(None, 0)
///     .args(["-m", "256M"]);
/// assert_eq!(config.name_str(), "web1");
/// ```
#[derive(Debug, Clone)]
pub struct MachineBuilder {
    pub(crate) config: Config,
}

/// What a machine runs with: the builder's settings, validated ([`MachineBuilder::resolve`])
/// when a launch starts and then fixed for that run. The machine stores this, never the
/// builder, so editing the builder ([`Machine::config_mut`](crate::Machine::config_mut))
/// cannot change a run under way.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) binary: String,
    pub(crate) args: Vec<String>,
    pub(crate) wrapper: Vec<String>,
    pub(crate) name: String,
    pub(crate) base_temp_dir: PathBuf,
    pub(crate) monitor: Monitor,
    pub(crate) qmp_enabled: bool,
    pub(crate) console_log: Option<PathBuf>,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) launch_timeout: Duration,
    pub(crate) machine_type: Option<String>,
    pub(crate) console: Option<ConsoleConfig>,
    pub(crate) accel: Option<Accel>,
    pub(crate) add_fds: Vec<AddFd>,
    pub(crate) keep_run_dir: KeepRunDir,
    pub(crate) qmp_transcript: bool,
    pub(crate) console_buffer: usize,
    pub(crate) builtin_guest: bool,
    pub(crate) qtest: bool,
    pub(crate) guest_agent: bool,
    pub(crate) allow_remote_monitor: bool,
    /// How many events the history keeps.
    pub(crate) event_history: usize,
    /// Typed devices, rendered at launch (see `devices.rs`).
    pub(crate) devices: crate::devices::Devices,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `$XDG_RUNTIME_DIR` (a per-user tmpfs made for runtime files and sockets) when set, else
/// the system temp dir. On tmpfs a run dir costs ~25 us to remove; on ext4 ~150 us.
fn default_base_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute() && dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "vm-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl MachineBuilder {
    pub(crate) fn new(binary: impl Into<String>) -> Self {
        let config = Config {
            binary: binary.into(),
            args: Vec::new(),
            wrapper: Vec::new(),
            name: unique_name(),
            base_temp_dir: default_base_dir(),
            monitor: Monitor::Socketpair,
            qmp_enabled: true,
            console_log: None,
            log_dir: None,
            launch_timeout: DEFAULT_LAUNCH_TIMEOUT,
            machine_type: None,
            console: None,
            accel: None,
            add_fds: Vec::new(),
            keep_run_dir: KeepRunDir::Never,
            qmp_transcript: false,
            console_buffer: crate::console::DEFAULT_CONSOLE_BUFFER,
            builtin_guest: false,
            qtest: false,
            guest_agent: false,
            allow_remote_monitor: false,
            event_history: crate::typed_qmp::DEFAULT_EVENT_HISTORY,
            devices: Default::default(),
        };
        MachineBuilder { config }
    }

    /// The configuration a launch runs with, once it is valid.
    pub(crate) fn resolve(&self) -> Result<Config> {
        self.config.validate()?;
        Ok(self.config.clone())
    }

    /// The configuration as it stands, not validated (for a machine not launched yet).
    pub(crate) fn unresolved(&self) -> Config {
        self.config.clone()
    }

    /// Appends arguments after the generated ones (QEMUMachine's `args`/`add_args`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An argv prefix, e.g. `["gdbserver", ":1234"]` or `["valgrind"]`.
    pub fn wrapper<I, S>(mut self, wrapper: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// The machine's name: names its log file and run dir, and appears in every error.
    /// Unique by default. It must not contain `/` or be `.` or `..`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Where the run dir is created (default: `$XDG_RUNTIME_DIR` when set, else the system
    /// temp dir).
    pub fn base_temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.base_temp_dir = dir.into();
        self
    }

    /// Where QMP lives (default: a socketpair).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.config.monitor = monitor;
        self
    }

    /// Allows a [`Monitor::Tcp`] on an address other than loopback. Off by default: a QMP
    /// monitor has no authentication, and anyone who reaches it controls the VM.
    pub fn allow_remote_monitor(mut self, allow: bool) -> Self {
        self.config.allow_remote_monitor = allow;
        self
    }

    /// Disables (or re-enables) the QMP monitor; shutdown then uses SIGTERM.
    pub fn qmp_monitor(mut self, enabled: bool) -> Self {
        self.config.qmp_enabled = enabled;
        self
    }

    /// A raw log of everything the console sends (created 0600).
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.console_log = Some(path.into());
        self
    }

    /// Where `<name>.log` (QEMU's stdout and stderr) goes; by default the run dir, which
    /// goes away at shutdown (the text stays available from `get_log()`).
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.log_dir = Some(dir.into());
        self
    }

    /// Deadline for the whole launch, from `launch()` to QMP ready (QEMUMachine's
    /// `qmp_timer`; default 30 s). It includes any grace QEMU gets to exit after closing its
    /// monitor; on the deadline QEMU is killed at once. Any duration works (`Duration::MAX`
    /// means no deadline).
    pub fn launch_timeout(mut self, timeout: Duration) -> Self {
        self.config.launch_timeout = timeout;
        self
    }

    /// `-machine TYPE` (QEMUMachine's `set_machine`).
    pub fn machine_type(mut self, machine_type: impl Into<String>) -> Self {
        self.config.machine_type = Some(machine_type.into());
        self
    }

    /// Adds a serial console (QEMUMachine's `set_console`): `index` × `-serial null` first,
    /// then the console on `-serial chardev:console`, or on `-device TYPE,chardev=console`
    /// when `device_type` is given.
    pub fn console(mut self, device_type: Option<&str>, index: usize) -> Self {
        self.config.console = Some(ConsoleConfig {
            device_type: device_type.map(Into::into),
            index,
        });
        self
    }

    /// Size of the console's ring buffer (default 1 MiB): the newest output kept for
    /// `expect` and `history`. At most [`MAX_CONSOLE_BUFFER`] (256 MiB): more is an
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) at launch.
    pub fn console_buffer(mut self, bytes: usize) -> Self {
        self.config.console_buffer = bytes;
        self
    }

    /// Boots the [built-in guest](crate::guest): its image is written into the run dir at
    /// launch and attached as the first IDE disk (`snapshot=on`), with `isa-debug-exit`.
    /// Unless already set, this also picks the `pc` machine, a serial console, and
    /// [`Accel::KvmOrTcg`].
    pub fn builtin_guest(mut self) -> Self {
        self.config.builtin_guest = true;
        self.config.machine_type.get_or_insert_with(|| "pc".into());
        self.config.accel.get_or_insert(Accel::KvmOrTcg);
        if self.config.console.is_none() {
            self = self.console(None, 0);
        }
        self
    }

    /// Attaches a qtest session over a socketpair (`-qtest chardev:qtest`), with
    /// `-accel qtest` where the binary has that accelerator (Debian's 7.2 does not: there
    /// the clock commands are refused). See [`Machine::qtest`](crate::Machine::qtest).
    pub fn qtest(mut self) -> Self {
        self.config.qtest = true;
        self
    }

    /// Adds a virtio-serial port named `org.qemu.guest_agent.0` backed by a socketpair, for
    /// [`Machine::guest_agent`](crate::Machine::guest_agent). The guest must run qemu-ga.
    pub fn guest_agent(mut self) -> Self {
        self.config.guest_agent = true;
        self
    }

    /// Adds `-monitor null`.
    pub fn monitor_null(self) -> Self {
        self.args(["-monitor", "null"])
    }

    /// Hands `fd` to QEMU as `-add-fd fd=N,set=S,opaque=O[,opts]`. The descriptor must stay
    /// open until launch; it is inherited under its own number.
    pub fn add_fd(
        mut self,
        fd: RawFd,
        fdset: u32,
        opaque: impl Into<String>,
        opts: impl Into<String>,
    ) -> Self {
        self.config.add_fds.push(AddFd {
            fd,
            fdset,
            opaque: opaque.into(),
            opts: opts.into(),
        });
        self
    }

    /// The accelerator: [`Accel::Tcg`], [`Accel::Kvm`], or [`Accel::KvmOrTcg`] (KVM only
    /// where it really works). Unset, QEMU picks (TCG on x86 hosts).
    pub fn accel(mut self, accel: Accel) -> Self {
        self.config.accel = Some(accel);
        self
    }

    /// Whether to keep the run dir after shutdown (default: never).
    pub fn keep_run_dir(mut self, keep: KeepRunDir) -> Self {
        self.config.keep_run_dir = keep;
        self
    }

    /// Writes a QMP transcript (`qmp.log`) in the run dir.
    pub fn qmp_transcript(mut self, on: bool) -> Self {
        self.config.qmp_transcript = on;
        self
    }

    /// The name in force.
    pub fn name_str(&self) -> &str {
        &self.config.name
    }

    /// The binary.
    pub fn binary(&self) -> &str {
        &self.config.binary
    }

    /// The extra arguments so far.
    pub fn extra_args(&self) -> &[String] {
        &self.config.args
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
        let name = &self.name;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(Error::config(format!(
                "machine name {name:?} must be a plain file name (no '/', not '.' or '..')"
            )));
        }
        if self.binary.is_empty() {
            return Err(Error::config("the QEMU binary is empty"));
        }
        if let Monitor::Tcp(host, _) = &self.monitor {
            if !self.allow_remote_monitor && !is_loopback(host) {
                return Err(Error::config(format!(
                    "the QMP monitor would listen on {host}, which is not loopback; \
                     use 127.0.0.1 or ::1, or allow_remote_monitor(true)"
                )));
            }
        }
        let renders_run_dir = self.builtin_guest
            || matches!(&self.monitor, Monitor::Unix(path) if path.is_relative());
        if renders_run_dir && self.base_temp_dir.to_str().is_none() {
            return Err(Error::config(format!(
                "the base temp dir {} is not UTF-8: QEMU's options cannot name paths under it",
                self.base_temp_dir.display()
            )));
        }
        if let Monitor::Unix(path) = &self.monitor {
            if path.to_str().is_none() {
                return Err(Error::config(format!(
                    "the monitor path {} is not UTF-8",
                    path.display()
                )));
            }
            let inside = path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if path.as_os_str().is_empty() || (path.is_relative() && !inside) {
                return Err(Error::config(format!(
                    "the relative monitor path {} would leave the run dir; \
                     use plain names (no '..'), or an absolute path",
                    path.display()
                )));
            }
        }
        if let Some(flag) = self
            .args
            .iter()
            .find(|a| *a == "-daemonize" || *a == "--daemonize")
        {
            return Err(Error::config(format!(
                "{flag} is not supported: QEMU would fork away from the process this library \
                 spawned, supervises and reaps, and outlive the machine (and this process)"
            )));
        }
        if self.console_buffer > MAX_CONSOLE_BUFFER {
            return Err(Error::config(format!(
                "console_buffer({}) is more than {} MiB; the console keeps its newest bytes, \
                 use console_log() to keep everything",
                self.console_buffer,
                MAX_CONSOLE_BUFFER >> 20
            )));
        }
        if !self.qmp_enabled && self.monitor != Monitor::Socketpair {
            return Err(Error::config(
                "a monitor address was given but the QMP monitor is disabled",
            ));
        }
        self.devices.validate()?;
        if !self.devices.virtiofs().is_empty() && self.args.iter().any(|a| a == "-m" || a == "--m")
        {
            // Its shared memory is sized by the typed memory; a later raw -m would differ.
            return Err(Error::config(
                "virtiofs shares size the guest's shared memory from memory_mib(): give the \
                 memory there, not as a raw -m",
            ));
        }
        Ok(())
    }
}
