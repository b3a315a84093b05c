//! Port of a Python kernel+initrd boot that runs `uname -a` in the guest (no agent):
//! `cargo run -p qemu-machine --example port_boot` (QEMU from `$QEMU`, the Linux test guest
//! from `guests/build-linux-guest.sh`).
use std::time::Duration;

use qemu_machine::{Machine, Report, RunOptions};

#[tokio::main]
async fn main() -> Result<(), Report> {
    let dir = qemu_test_support::guests::built_linux_guest_dir();
    let t = Duration::from_secs(120);
    let mut vm = Machine::new(
        Machine::builder(qemu_test_support::qemu())
            .console(None, 0)
            .memory_mib(256)
            .kernel(dir.join("vmlinuz"))
            .initrd(dir.join("initrd.gz"))
            .kernel_cmdline("console=ttyS0 quiet panic=-1"),
    );
    vm.launch().await?;
    let console = vm.console()?;
    console.expect_any("guest# ", ["Kernel panic"], t).await?;
    let uname = console.run("uname -a", RunOptions::default()).await?;
    print!("{}", uname.output);
    vm.shutdown().await?;
    Ok(())
}
