//! Port of a Python kernel+initrd boot that runs `uname -a` in the guest (no agent).
//! `cargo run -p qemu-machine --example port_boot [GUEST_DIR]` (default .cache/guests/linux).
use std::time::Duration;

use qemu_machine::{Accel, Machine, Report, RunOptions};

#[tokio::main]
async fn main() -> Result<(), Report> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or(".cache/guests/linux".into());
    let mut vm = Machine::new(
        Machine::builder("qemu-system-x86_64")
            .machine_type("pc")
            .accel(Accel::KvmOrTcg)
            .console(None, 0)
            .memory_mib(256)
            .kernel(format!("{dir}/vmlinuz"))
            .initrd(format!("{dir}/initrd.gz"))
            .kernel_cmdline("console=ttyS0 quiet panic=-1"),
    );
    vm.launch().await?;
    let console = vm.console()?;
    console
        .expect_any("guest# ", ["Kernel panic"], Duration::from_secs(120))
        .await?;
    print!(
        "{}",
        console.run("uname -a", RunOptions::default()).await?.output
    );
    vm.shutdown().await?;
    Ok(())
}
