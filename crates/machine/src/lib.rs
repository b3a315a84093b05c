//! One QEMU virtual machine's whole life, as QEMU's Python `QEMUMachine` does it, with
//! deadlines on every wait and nothing left behind.
//!
//! - [`Machine`] (async) and [`blocking::Machine`]: launch QEMU with the seed's command line,
//!   QMP over a socketpair (or server mode), events with sub-dict matching and one deadline,
//!   the shutdown ladder (`quit` → SIGKILL) with an error that says why.
//! - Supervision: QEMU runs in a process group of its own under a per-VM watchdog process
//!   that kills it, its group and every descendant when QEMU exits, when asked, or when
//!   this process dies (even by SIGKILL); dropping a running [`Machine`] kills and reaps it;
//!   the private run dir is removed. [`argv_process`] gives the same to a command line
//!   built elsewhere (the Python binding's).
//! - [`devices`] and [`virtiofs`]: typed devices, and host directories over virtiofs with a
//!   supervised `virtiofsd` per share.
//! - [`fleet`]: many machines concurrently.
//! - [`saved_state`]: a machine's whole state saved to a file and launched from it;
//!   [`snapshot_cache`]: booted guests cached for test suites (restore, not boot).
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> qemu_machine::Result<()> {
//! use std::time::Duration;
//! use qemu_machine::{Accel, Machine};
//! use serde_json::json;
//!
//! let mut vm = Machine::new(
//!     Machine::builder("qemu-system-x86_64").machine_type("pc").accel(Accel::KvmOrTcg).args(["-S"]),
//! );
//! vm.launch().await?; // fails with exit status + command line + QEMU's output
//! vm.cmd("cont", json!({})).await?;
//! vm.event_wait("RESUME", None, Duration::from_secs(5)).await?;
//! vm.shutdown().await?; // quit -> SIGKILL, each with a deadline
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod accel;
mod agent_socket;
mod argv;
pub mod argv_process;
pub mod blocking;
mod config;
pub mod console;
mod deadline;
pub mod devices;
mod error;
mod event_cache;
mod event_match;
pub mod fleet;
pub mod guest;
pub mod guest_agent;
pub mod guest_shell;
pub mod hotplug;
pub mod job;
mod launch;
mod log_file;
mod machine;
pub mod migration;
mod option_value;
mod output;
pub mod probe;
mod proc_scan;
pub mod qmp_log;
pub mod qtest;
mod raw_syscall;
pub mod report;
mod run_dir;
pub mod saved_state;
mod shutdown;
pub mod snapshot_cache;
mod sock;
mod spawn;
mod state_file;
pub mod typed_qmp;
pub mod usernet;
pub mod virtiofs;
mod watchdog;
mod watchdog_child;

pub use accel::{is_kvm_pvm, kvm_really_usable, Accel};
pub use config::{
    ConsoleConfig, KeepRunDir, MachineBuilder, Monitor, DEFAULT_LAUNCH_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT, MAX_CONSOLE_BUFFER,
};
pub use console::{Console, Match, Pattern};
pub use error::{
    redact_argv, shell_words, AbnormalShutdown, Error, ErrorKind, LaunchFailure, LaunchReason,
    QemuExited, Result, ShutdownCause,
};
pub use event_cache::EVENT_CACHE_LIMIT;
pub use event_match::{conv_keys, event_match};
pub use guest_agent::{ExecOutput, GuestAgent};
pub use guest_shell::{CommandOutput, RunOptions};
pub use machine::Machine;
pub use option_value::escape_option_value;
pub use probe::Probe;
pub use qmp;
pub use qtest::{IrqEvent, Qtest};
pub use report::Report;
pub use shutdown::Stop;
