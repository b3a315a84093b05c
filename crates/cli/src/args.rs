//! The command line: every subcommand, flag and choice of `qemu-machine` as clap types, so
//! that the commands read typed values and `completions` sees every choice.
//!
//! Doc comments on fields and variants are the help texts. The values of a
//! [`clap::ValueEnum`] have plain comments instead: a doc comment there would add a line per
//! value to `--help`, which lists just their names.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::failure::Failure;

/// Manage QEMU virtual machines: run one on this terminal, or talk to one over QMP.
#[derive(Debug, Parser)]
#[command(name = "qemu-machine", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands; each variant's doc comment is its help.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Boot a VM (the built-in guest unless a kernel or image is given) with this terminal
    /// as its serial console; Ctrl-C goes to the guest; QMP events are printed on stderr.
    ///
    /// Ctrl-] then q shuts the VM down gracefully: `system_powerdown` (the ACPI power
    /// button), up to --shutdown-timeout seconds for the guest to power off, then `quit`,
    /// up to --timeout seconds for QEMU to exit, then SIGKILL. Ctrl-] then k stops it at
    /// once: `quit`, then SIGKILL after --timeout. Ctrl-] Ctrl-] sends one Ctrl-]. The end
    /// of stdin, a stdout that is gone, SIGTERM, SIGHUP, SIGINT and SIGQUIT take the
    /// graceful path too; a second signal kills QEMU at once, and after a signal the exit
    /// status is 128 + its number. Otherwise the exit status is QEMU's, or 1 with a message
    /// when QEMU had to be killed.
    Run(Box<RunArgs>),
    /// An interactive QMP shell (qmp-shell syntax: `command key=value ...`); reads lines
    /// and prints one JSON reply per line when stdin is not a terminal.
    Shell(ShellArgs),
    /// Run one QMP command and print its result as JSON.
    Exec(ExecArgs),
    /// Print QMP events as JSON lines.
    Events(EventsArgs),
    /// Browse and change QOM properties.
    Qom(QomArgs),
    /// Talk to the guest agent.
    Ga(GaArgs),
    /// Migrate a running VM to URI (e.g. unix:/path, tcp:host:port, exec:cat>file) and wait
    /// for the end; a progress bar (bytes of RAM sent) on a terminal; the final
    /// query-migrate as JSON. Exit 1 when it fails, 124 (and cancelled) after --timeout.
    Migrate(MigrateArgs),
    /// Wait for a block job (mirror, backup, stream, commit) to end, or with --ready to be
    /// ready; a progress bar (offset of length) on a terminal; the job's last event as
    /// JSON. Exit 1 when it fails or is cancelled, 124 after --timeout (the job goes on).
    Job(JobArgs),
    /// Which accelerators a QEMU binary has, and which one `--accel auto` picks here.
    Accel(AccelArgs),
    /// The versions of this tool and of QEMU.
    Version(VersionArgs),
    /// The snapshot cache of `run --exec --warm` (and of the library's SnapshotCache):
    /// list, clean or evict its entries.
    Cache(CacheArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where a QMP (or guest agent) socket is: a UNIX path, `host:port` or `[v6addr]:port`.
#[derive(Debug, Args)]
pub(crate) struct Address {
    /// The socket [default: $QMP_SOCKET].
    #[arg(env = "QMP_SOCKET", value_name = "ADDRESS")]
    pub(crate) address: String,
}

impl Address {
    /// The address, or a usage failure (exit status 2) saying why it is not one.
    pub(crate) fn parse(&self) -> Result<qmp::Address, Failure> {
        self.address
            .parse()
            .map_err(|e: qmp::AddressParseError| Failure::with_status(e.to_string(), 2))
    }
}

/// Which QEMU `run`, `accel` and `version` run: `--binary`, else `$QEMU`.
#[derive(Debug, Args)]
pub(crate) struct QemuBinary {
    /// The QEMU binary.
    #[arg(long, env = "QEMU", default_value = "qemu-system-x86_64")]
    pub(crate) binary: String,
}

/// The longest any deadline here is: 100 years, "no deadline" in effect. Longer ones (up to
/// `inf`) are cut to it, so that no `Instant + Duration`, here or in the libraries, can
/// overflow and panic.
pub(crate) const LONGEST_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A `--timeout`-like number of seconds as a duration (at most [`LONGEST_TIMEOUT`]), or a
/// usage failure (exit status 2) naming `what` when it is negative or not a number.
pub(crate) fn seconds(value: f64, what: &str) -> Result<Duration, Failure> {
    if value.is_nan() || value < 0.0 {
        return Err(Failure::with_status(
            format!("{what} must be a positive number of seconds"),
            2,
        ));
    }
    Ok(Duration::try_from_secs_f64(value).map_or(LONGEST_TIMEOUT, |d| d.min(LONGEST_TIMEOUT)))
}

/// An optional `--timeout`: see [`seconds`].
pub(crate) fn optional_seconds(
    value: Option<f64>,
    what: &str,
) -> Result<Option<Duration>, Failure> {
    value.map(|value| seconds(value, what)).transpose()
}

/// The accelerator choice of `run` (in a `--config` file: "auto", "tcg" or "kvm").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AccelChoice {
    /// KVM where it really works (not kvm-pvm), else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM, as asked.
    Kvm,
}

/// The arguments of `run`. Every option but `--config` and `--dry-run` can also come from
/// the `--config` file (see [`crate::config::RunConfig`]), so none has a clap default: an
/// option not given is `None`, and the file or the default fills it in.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Read the options from this TOML file (keys as the long options, with `_` for `-`,
    /// e.g. shutdown_timeout = 60, qemu_args = ["-smp", "2"]; the repeatable --disk, --net
    /// and --share as lists of the same strings, e.g. disk = ["data.img,format=qcow2"]);
    /// options given here override it (a repeatable one replaces the file's whole list), an
    /// unknown key is an error, relative paths in it are relative to its directory.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the QEMU command line, shell-quoted, and exit without starting anything. The
    /// monitor and console qemu-machine hands QEMU are socketpairs, which cannot be given by
    /// hand: in the printed command they are on stdio (-serial mon:stdio), and comments say
    /// so. Needs --kernel or --image: the built-in guest's disk only exists once it runs.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Status lines, QMP events and a failure on stderr as JSON objects, one per line
    /// (events as QEMU sent them, the rest as {"status": ...}; no spinner).
    #[arg(long)]
    pub(crate) json: bool,
    /// The accelerator [default: auto].
    #[arg(long, value_enum)]
    pub(crate) accel: Option<AccelChoice>,
    /// Guest memory (QEMU's -m), e.g. 256M.
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,
    /// A Linux kernel to boot.
    #[arg(long)]
    pub(crate) kernel: Option<PathBuf>,
    /// Its initrd (needs a kernel).
    #[arg(long)]
    pub(crate) initrd: Option<PathBuf>,
    /// Its command line (needs a kernel) [default: console=ttyS0].
    #[arg(long)]
    pub(crate) append: Option<String>,
    /// A disk image to boot (an IDE disk; never written: snapshot=on, so the guest's
    /// writes are lost); not with a kernel. For a disk that is written, use --disk.
    #[arg(long)]
    pub(crate) image: Option<PathBuf>,
    /// Another disk (repeatable; works with --kernel):
    /// PATH[,format=raw|qcow2|...][,if=virtio|ide|scsi][,readonly=on][,snapshot=on]
    /// (default raw, virtio, written; `,,` in PATH is a comma).
    #[arg(long, value_name = "PATH[,KEY=VALUE...]")]
    pub(crate) disk: Vec<String>,
    /// User-mode networking on a virtio-net card (repeatable):
    /// user[,hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT]... Forwards listen on ADDR, an IPv4
    /// address, 127.0.0.1 when empty (0.0.0.0 opens the guest's port to the network); a tcp
    /// HOSTPORT 0 picks a free port; each forward is printed after launch ("tcp
    /// 127.0.0.1:PORT -> guest GUESTPORT").
    #[arg(long, value_name = "user[,hostfwd=...]")]
    pub(crate) net: Vec<String>,
    /// Share a host directory (repeatable): DIR[,tag=TAG][,readonly=off][,fs=9p|virtiofs];
    /// read-only unless readonly=off; tag "share" (then share1, share2...) unless given;
    /// 9p unless fs=virtiofs (served by a virtiofsd started and stopped with the VM:
    /// $QEMU_MACHINE_VIRTIOFSD, else virtiofsd on PATH, /usr/libexec, /usr/lib/qemu or
    /// /usr/lib).
    /// In a Linux guest: mount -t 9p -o trans=virtio TAG /mnt, or mount -t virtiofs TAG /mnt.
    #[arg(long, value_name = "DIR[,KEY=VALUE...]")]
    pub(crate) share: Vec<String>,
    /// Serve the guest agent (qemu-ga in the guest) at this UNIX path (mode 0600) while
    /// the VM runs, for `qemu-machine ga PATH ...`.
    #[arg(long, value_name = "PATH")]
    pub(crate) ga: Option<PathBuf>,
    /// How many vCPUs (QEMU's -smp).
    #[arg(long, value_name = "N")]
    pub(crate) smp: Option<u32>,
    /// The CPU model (QEMU's -cpu), e.g. host or max.
    #[arg(long, value_name = "MODEL")]
    pub(crate) cpu: Option<String>,
    /// Run this shell command in the guest instead of attaching the terminal: wait for the
    /// shell prompt on the serial console (--prompt), run it, stream its output to stdout,
    /// power the guest off, and exit with its status; 124 when --exec-timeout passes, 125
    /// when the guest fails (a kernel panic, QEMU exits), with the console's tail on stderr.
    #[arg(long, value_name = "CMD")]
    pub(crate) exec: Option<String>,
    /// The guest's shell prompt for --exec, a regex matched at the end of the console
    /// output so far [default: `[#$] ` then any terminal escapes: the test guest's
    /// `guest# `, a root `root@host:~# `, a user's `$ `].
    #[arg(long, value_name = "REGEX")]
    pub(crate) prompt: Option<String>,
    /// Seconds --exec waits for the prompt and the command, together [default: 600].
    #[arg(long, value_name = "S")]
    pub(crate) exec_timeout: Option<f64>,
    /// Also serve QMP at this UNIX path, to any number of clients at once (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub(crate) qmp: Option<PathBuf>,
    /// Write everything the console prints to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) console_log: Option<PathBuf>,
    /// Keep the run directory (QEMU's log, sockets) afterwards.
    #[arg(long)]
    pub(crate) keep_run_dir: bool,
    /// Seconds for QMP to come up at launch, and for QEMU to exit after `quit` before it
    /// is killed [default: 30].
    #[arg(long, value_name = "S")]
    pub(crate) timeout: Option<f64>,
    /// Seconds a graceful shutdown waits for the guest to power off after
    /// `system_powerdown` before it sends `quit` (0: `quit` at once) [default: 30].
    #[arg(long, value_name = "S")]
    pub(crate) shutdown_timeout: Option<f64>,
    /// The QEMU binary [default: $QEMU, else qemu-system-x86_64; $QEMU counts as this
    /// option, over the --config file].
    #[arg(long, env = "QEMU")]
    pub(crate) binary: Option<String>,
    /// On detach (Ctrl-] q or k, or the end of stdin), save the VM's whole state to FILE
    /// (created 0600, atomically) instead of powering it off, then stop QEMU. Restore it
    /// with --restore FILE and the same options. Not with 9p shares (QEMU cannot migrate
    /// them).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["exec", "dry_run", "restore"])]
    pub(crate) save_state: Option<PathBuf>,
    /// Start the VM from a state saved with --save-state (give the same options it was
    /// saved with) instead of booting it: it resumes where it was saved. Its writable disks
    /// get temporary overlays: the saved disks are never written.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dry_run", "warm"])]
    pub(crate) restore: Option<PathBuf>,
    /// With --exec: use the snapshot cache. The first run boots, waits for the prompt,
    /// saves the booted guest in the cache and restores it; later runs with the same
    /// options and files restore it at once. The VM is stopped with `quit` afterwards
    /// (its writes go to overlays). Cache: $QEMU_MACHINE_SNAPSHOT_CACHE, else
    /// $XDG_CACHE_HOME/qemu-machine/snapshots (see `qemu-machine cache`).
    #[arg(long, requires = "exec", conflicts_with = "dry_run")]
    pub(crate) warm: bool,
    /// Extra QEMU arguments, after `--` (they replace the --config file's qemu_args).
    #[arg(last = true, value_name = "QEMU_ARGS")]
    pub(crate) qemu_args: Vec<String>,
}

/// The arguments of `cache`.
#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    pub(crate) action: CacheAction,
    /// The cache directory [default: $QEMU_MACHINE_SNAPSHOT_CACHE, else
    /// $XDG_CACHE_HOME/qemu-machine/snapshots, else ~/.cache/qemu-machine/snapshots].
    #[arg(long, value_name = "DIR", global = true)]
    pub(crate) dir: Option<PathBuf>,
    /// Output JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

// What `cache` does; each variant's doc comment is its help.
#[derive(Debug, Subcommand)]
pub(crate) enum CacheAction {
    /// The entries, least recently used first: key, size, last use, QEMU version.
    List,
    /// Remove every entry (but those being built right now) and what interrupted builds
    /// left.
    Clean,
    /// Remove the least recently used entries until the rest fit in --max-mib.
    Evict {
        /// The size limit in MiB [default: $QEMU_MACHINE_SNAPSHOT_CACHE_MAX_MIB, else 4096].
        #[arg(long, value_name = "MIB")]
        max_mib: Option<u64>,
    },
}

/// The arguments of `shell`.
#[derive(Debug, Args)]
pub(crate) struct ShellArgs {
    /// HMP mode: lines are human monitor commands (`cpu N` switches the CPU).
    #[arg(short = 'H', long)]
    pub(crate) hmp: bool,
    /// Pretty-print replies.
    #[arg(short, long)]
    pub(crate) pretty: bool,
    /// Echo the JSON sent (secrets redacted).
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Append each command and its reply to this file, as JSON lines with secrets redacted
    /// (created 0600; a symlink is not followed).
    #[arg(short, long, value_name = "LOG")]
    pub(crate) log: Option<PathBuf>,
    /// No greeting or negotiation (for qemu-ga).
    #[arg(short = 'N', long)]
    pub(crate) no_negotiate: bool,
    /// Deadline in seconds for the connection, the greeting, and each command.
    #[arg(long, value_name = "S")]
    pub(crate) timeout: Option<f64>,
    #[command(flatten)]
    pub(crate) address: Address,
}

/// The arguments of `exec`.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub(crate) address: Address,
    /// The command.
    pub(crate) command: String,
    /// Its arguments, as key=value (qmp-shell syntax).
    pub(crate) arguments: Vec<String>,
    /// Pretty-print the result.
    #[arg(short, long)]
    pub(crate) pretty: bool,
    /// Deadline in seconds for the connection, the greeting, and the command.
    #[arg(long, value_name = "S")]
    pub(crate) timeout: Option<f64>,
}

/// The arguments of `migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    pub(crate) address: Address,
    /// Where to: QEMU's migration URI (the destination was started with -incoming).
    pub(crate) uri: String,
    /// Deadline in seconds for the whole migration.
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    pub(crate) timeout: f64,
}

/// The arguments of `job`.
#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    #[command(flatten)]
    pub(crate) address: Address,
    /// The job's id (its device); the one running job when not given.
    pub(crate) id: Option<String>,
    /// Return once the job is ready (a mirror in sync) instead of when it ends.
    #[arg(long)]
    pub(crate) ready: bool,
    /// Deadline in seconds.
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    pub(crate) timeout: f64,
}

/// The arguments of `events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    pub(crate) address: Address,
    /// Only events with this name (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub(crate) names: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub(crate) count: Option<usize>,
    /// Stop after this many seconds (an error if --count was not reached).
    #[arg(long, value_name = "S")]
    pub(crate) timeout: Option<f64>,
    /// Accepted for symmetry with `run --json` and `qom --json`: the output is always
    /// JSON lines, each event as QEMU sent it.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The arguments of `qom`.
#[derive(Debug, Args)]
pub(crate) struct QomArgs {
    #[command(flatten)]
    pub(crate) address: Address,
    #[command(subcommand)]
    pub(crate) action: QomAction,
    /// Output JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Deadline in seconds for the connection, the greeting, and each command (`tree`:
    /// for the whole walk).
    #[arg(long, value_name = "S", global = true)]
    pub(crate) timeout: Option<f64>,
}

// What `qom` does; each variant's doc comment is its help.
#[derive(Debug, Subcommand)]
pub(crate) enum QomAction {
    /// The properties of an object (children end in `/`, links start with `@`).
    List {
        /// The object's path.
        #[arg(default_value = "/")]
        path: String,
    },
    /// One property: PATH.PROPERTY.
    Get {
        /// e.g. /machine.type
        property: String,
    },
    /// Set a property: PATH.PROPERTY VALUE (qmp-shell value syntax).
    Set {
        /// e.g. /machine/peripheral/net0.link
        property: String,
        /// The new value.
        value: String,
    },
    /// Every object and property under a path.
    Tree {
        /// Where to start.
        #[arg(default_value = "/")]
        path: String,
    },
}

/// The arguments of `ga`.
#[derive(Debug, Args)]
pub(crate) struct GaArgs {
    #[command(flatten)]
    pub(crate) address: Address,
    #[command(subcommand)]
    pub(crate) action: GaAction,
    /// How long to wait for the agent, in seconds.
    #[arg(long, value_name = "S", default_value_t = 30.0, global = true)]
    pub(crate) timeout: f64,
}

// What `ga` does; each variant's doc comment is its help.
#[derive(Debug, Subcommand)]
pub(crate) enum GaAction {
    /// Is the agent there?
    Ping,
    /// The agent's version and commands.
    Info,
    /// Run a program in the guest and print its output.
    Exec {
        /// The program (full path).
        path: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print a guest file.
    Cat {
        /// The file.
        path: String,
    },
    /// Write standard input to a guest file.
    Write {
        /// The file.
        path: String,
    },
    /// Filesystem freeze: status, freeze or thaw.
    Fsfreeze {
        /// What to do.
        #[arg(value_enum)]
        action: FsfreezeAction,
    },
    /// Shut the guest down (powerdown, halt or reboot).
    Shutdown {
        /// How.
        #[arg(value_enum, default_value_t = ShutdownMode::Powerdown)]
        mode: ShutdownMode,
    },
}

/// What `ga fsfreeze` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FsfreezeAction {
    // Print whether the guest's filesystems are frozen.
    Status,
    // Freeze them; print how many.
    Freeze,
    // Thaw them; print how many.
    Thaw,
}

/// How `ga shutdown` shuts the guest down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShutdownMode {
    // ACPI power button: the guest shuts down cleanly.
    Powerdown,
    // Halt the guest.
    Halt,
    // Reboot the guest.
    Reboot,
}

impl ShutdownMode {
    /// The mode as qemu-ga's `guest-shutdown` names it (the same word as on the command line).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Powerdown => "powerdown",
            ShutdownMode::Halt => "halt",
            ShutdownMode::Reboot => "reboot",
        }
    }
}

/// The arguments of `accel`.
#[derive(Debug, Args)]
pub(crate) struct AccelArgs {
    #[command(flatten)]
    pub(crate) qemu: QemuBinary,
    /// Output JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The arguments of `version`.
#[derive(Debug, Args)]
pub(crate) struct VersionArgs {
    #[command(flatten)]
    pub(crate) qemu: QemuBinary,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, ValueEnum};

    use super::{seconds, Cli, ShutdownMode, LONGEST_TIMEOUT};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_saturate_and_reject_nonsense() {
        assert_eq!(seconds(1.5, "t").unwrap().as_millis(), 1500);
        for huge in [1e19, 1e300, f64::INFINITY] {
            assert_eq!(seconds(huge, "t").unwrap(), LONGEST_TIMEOUT);
        }
        for bad in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            assert!(seconds(bad, "t").is_err());
        }
        let far = std::time::Instant::now().checked_add(LONGEST_TIMEOUT);
        assert!(far.is_some());
        let far = tokio::time::Instant::now().checked_add(LONGEST_TIMEOUT);
        assert!(far.is_some());
    }

    #[test]
    fn shutdown_modes_are_spelled_as_on_the_command_line() {
        for mode in ShutdownMode::value_variants() {
            let value = mode.to_possible_value().unwrap();
            assert_eq!(mode.as_str(), value.get_name());
        }
    }
}
