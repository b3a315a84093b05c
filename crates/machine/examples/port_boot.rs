//! Port of a Python kernel+initrd boot that runs `uname -a` in the guest (no agent), from
//! the repository root: `cargo run -p qemu-machine --example port_boot`.
use std::time::Duration;

use qemu_machine::{Machine, Report, RunOptions};

#[tokio::main]
async fn main() -> Result<(), Report> {
    let (dir, t) = (".cache/guests/linux", Duration::from_secs(120));
    let mut vm = Machine::new(
        Machine::builder("qemu-system-x86_64")
            .console(None, 0)
            .memory_mib(256)
            .kernel(format!("{dir}/vmlinuz"))
            .initrd(format!("{dir}/initrd.gz"))
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
