//! `qemu-machine`: run a VM on your terminal, and talk QMP, qom and the guest agent.

mod run;
mod shell;
mod term;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Manage QEMU virtual machines: run one on this terminal, or talk to one over QMP.
#[derive(Debug, Parser)]
#[command(name = "qemu-machine", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a VM (the built-in guest unless a kernel or image is given) with this terminal
    /// as its serial console. Ctrl-] then q detaches and shuts it down; Ctrl-C goes to the
    /// guest; QMP events are printed on stderr.
    Run(RunArgs),
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
    /// Which accelerators a QEMU binary has, and which one `--accel auto` picks here.
    Accel(AccelArgs),
    /// The versions of this tool and of QEMU.
    Version(VersionArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where a QMP (or guest agent) socket is: a UNIX path, `host:port` or `[v6addr]:port`.
#[derive(Debug, Args)]
struct Address {
    /// The socket [default: $QMP_SOCKET].
    #[arg(env = "QMP_SOCKET", value_name = "ADDRESS")]
    address: String,
}

/// The accelerator choice of `run`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelChoice {
    /// KVM where it really works (not kvm-pvm), else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM, as asked.
    Kvm,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The accelerator.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Guest memory (QEMU's -m), e.g. 256M.
    #[arg(short = 'm', long, value_name = "SIZE")]
    memory: Option<String>,
    /// A Linux kernel to boot.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Its initrd.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Its command line [default: console=ttyS0].
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// A disk image to boot (never written: snapshot=on).
    #[arg(long, conflicts_with = "kernel")]
    image: Option<PathBuf>,
    /// Also serve QMP at this UNIX path, to any number of clients at once (mode 0600).
    #[arg(long, value_name = "PATH")]
    qmp: Option<PathBuf>,
    /// Write everything the console prints to this file.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Keep the run directory (QEMU's log, sockets) afterwards.
    #[arg(long)]
    keep_run_dir: bool,
    /// Deadline in seconds for QMP to come up, and for the shutdown at the end.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    timeout: f64,
    /// The QEMU binary.
    #[arg(long, env = "QEMU", default_value = "qemu-system-x86_64")]
    binary: String,
    /// Extra QEMU arguments, after `--`.
    #[arg(last = true, value_name = "QEMU_ARGS")]
    qemu_args: Vec<String>,
}

#[derive(Debug, Args)]
struct ShellArgs {
    /// HMP mode: lines are human monitor commands (`cpu N` switches the CPU).
    #[arg(short = 'H', long)]
    hmp: bool,
    /// Pretty-print replies.
    #[arg(short, long)]
    pretty: bool,
    /// Echo the JSON sent.
    #[arg(short, long)]
    verbose: bool,
    /// Append each command and its reply to this file, as JSON lines.
    #[arg(short, long, value_name = "LOG")]
    log: Option<PathBuf>,
    /// No greeting or negotiation (for qemu-ga).
    #[arg(short = 'N', long)]
    no_negotiate: bool,
    #[command(flatten)]
    address: Address,
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[command(flatten)]
    address: Address,
    /// The command.
    command: String,
    /// Its arguments, as key=value (qmp-shell syntax).
    arguments: Vec<String>,
    /// Pretty-print the result.
    #[arg(short, long)]
    pretty: bool,
}

#[derive(Debug, Args)]
struct EventsArgs {
    #[command(flatten)]
    address: Address,
    /// Only events with this name (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds (an error if --count was not reached).
    #[arg(long, value_name = "S")]
    timeout: Option<f64>,
}

#[derive(Debug, Args)]
struct QomArgs {
    #[command(flatten)]
    address: Address,
    #[command(subcommand)]
    action: QomAction,
    /// Output JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum QomAction {
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

#[derive(Debug, Args)]
struct GaArgs {
    #[command(flatten)]
    address: Address,
    #[command(subcommand)]
    action: GaAction,
    /// How long to wait for the agent, in seconds.
    #[arg(long, value_name = "S", default_value_t = 30.0, global = true)]
    timeout: f64,
}

#[derive(Debug, Subcommand)]
enum GaAction {
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
        #[arg(value_parser = ["status", "freeze", "thaw"])]
        action: String,
    },
    /// Shut the guest down (powerdown, halt or reboot).
    Shutdown {
        /// How.
        #[arg(default_value = "powerdown", value_parser = ["powerdown", "halt", "reboot"])]
        mode: String,
    },
}

#[derive(Debug, Args)]
struct AccelArgs {
    /// The QEMU binary.
    #[arg(long, env = "QEMU", default_value = "qemu-system-x86_64")]
    binary: String,
    /// Output JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VersionArgs {
    /// The QEMU binary.
    #[arg(long, env = "QEMU", default_value = "qemu-system-x86_64")]
    binary: String,
}

/// A failure to report: one line on stderr and an exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            status: 1,
        }
    }

    pub(crate) fn message_text(&self) -> &str {
        &self.message
    }

    pub(crate) fn with_status(message: impl Into<String>, status: u8) -> Failure {
        Failure {
            message: message.into(),
            status,
        }
    }
}

/// Most errors read well as their first line; the rest (command lines, output) follows.
impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::new(error.to_string())
    }
}

pub(crate) type Outcome = Result<u8, Failure>;

/// A QMP error the way QMP users read it: `Class: desc` for a command error.
pub(crate) fn qmp_error_text(error: &qmp::Error) -> String {
    match error {
        qmp::Error::Command(e) => format!("{}: {}", e.class, e.desc),
        other => other.to_string(),
    }
}

/// An exit status for a process that ended with `code`, or by `signal` (128 + signal, as
/// shells report it).
pub(crate) fn exit_status_code(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        _ => 1,
    }
}

pub(crate) fn parse_address(text: &str) -> Result<qmp::Address, Failure> {
    text.parse()
        .map_err(|e: qmp::AddressParseError| Failure::with_status(e.to_string(), 2))
}

pub(crate) fn seconds(value: f64, what: &str) -> Result<std::time::Duration, Failure> {
    std::time::Duration::try_from_secs_f64(value).map_err(|_| {
        Failure::with_status(format!("{what} must be a positive number of seconds"), 2)
    })
}

fn main() -> ExitCode {
    // Like other Unix tools: a closed pipe (`| head`) ends us quietly, not with an error.
    // SAFETY: setting a signal's disposition to the default, before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    // Never a backtrace in a user's face: one line, and where to report it.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("qemu-machine: internal error: {info} (please report this)");
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("qemu-machine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Shell(args) => shell::shell(args).await,
            Command::Exec(args) => tools::exec(args).await,
            Command::Events(args) => tools::events(args).await,
            Command::Qom(args) => tools::qom(args).await,
            Command::Ga(args) => tools::ga(args).await,
            Command::Accel(args) => tools::accel(args).await,
            Command::Version(args) => tools::version(args).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "qemu-machine",
                    &mut std::io::stdout(),
                );
                Ok(0)
            }
        }
    });
    // Background tasks (readers, drains) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            let mut lines = failure.message.lines();
            eprintln!("qemu-machine: {}", lines.next().unwrap_or("failed"));
            for line in lines {
                eprintln!("  {}", line.trim_start());
            }
            ExitCode::from(failure.status)
        }
    }
}
