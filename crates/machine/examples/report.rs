//! How a `main` reports a library error: return `Result<(), Report>`, and a failure prints
//! as text a person can read (what failed, exit status, command line, QEMU's output),
//! not as a `Debug` dump with a 50-element argv.
//!
//! `cargo run -p qemu-machine --example report` launches QEMU (`$QEMU`, else
//! `qemu-system-x86_64`) with a bad option on purpose and prints something like:
//!
//! ```text
//! Error: vm-123-0: launching QEMU failed: QMP did not come up: QMP connection closed: ...
//!   exit status: 1
//!   command: qemu-system-x86_64 -display none ... -no-such-option
//!   output:
//!     qemu-system-x86_64: -no-such-option: invalid option
//! ```

use qemu_machine::{Machine, Report};

#[tokio::main]
async fn main() -> Result<(), Report> {
    let qemu = qemu_test_support::qemu();
    let mut vm = Machine::new(Machine::builder(qemu).args(["-no-such-option"]));
    vm.launch().await?;
    vm.shutdown().await?;
    Ok(())
}
