//! Boots the Linux test guest (build it first: `guests/build-linux-guest.sh`), runs a shell
//! command on its serial console, and powers it off through ACPI.

use std::time::{Duration, Instant};

use qemu_machine::{Accel, Machine};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = qemu_test_support::guests::linux_guest_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    if !kernel.exists() {
        return Err(format!(
            "no guest in {}: run guests/build-linux-guest.sh",
            dir.display()
        )
        .into());
    }
    let start = Instant::now();
    let mut vm = Machine::new(
        Machine::builder(qemu_test_support::qemu())
            .name("linux")
            .machine_type("pc")
            .accel(Accel::KvmOrTcg)
            .console(None, 0)
            .args(["-m", "256M", "-no-reboot"])
            .args(["-kernel", &kernel.display().to_string()])
            .args(["-initrd", &initrd.display().to_string()])
            .args(["-append", "console=ttyS0 quiet panic=-1"]),
    );
    vm.launch().await?;
    let console = vm.console()?;
    console
        .expect_any("GUEST-READY", ["Kernel panic"], Duration::from_secs(120))
        .await?;
    console.expect("guest# ", Duration::from_secs(30)).await?;
    println!("shell ready after {:.1?}", start.elapsed());
    let out = console
        .exec_and_expect(
            "uname -a; echo DONE-$((6*7))",
            "DONE-42",
            Duration::from_secs(30),
        )
        .await?;
    let output: Vec<&str> = out.before.lines().skip(1).collect();
    println!("guest: {}", output.join("\n       ").trim());
    vm.cmd("system_powerdown", json!({})).await?;
    vm.wait(Duration::from_secs(60)).await?;
    println!(
        "powered off: {:?} after {:.1?}",
        vm.exit_status(),
        start.elapsed()
    );
    Ok(())
}
