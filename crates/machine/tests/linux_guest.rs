//! The Linux test guest (Debian cloud kernel + busybox initramfs, built by
//! `guests/build-linux-guest.sh`): boot to a shell on ttyS0, run a command, power off
//! through ACPI. Not skipped when the guest is missing: it fails and says how to build it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Scratch;
use qemu_machine::{Accel, Machine};
use serde_json::json;

fn linux_guest() -> (PathBuf, PathBuf, String) {
    let dir = std::env::var_os("QEMU_MACHINE_LINUX_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/guests/linux")
        });
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    assert!(
        kernel.exists() && initrd.exists(),
        "the Linux test guest is not in {}: run guests/build-linux-guest.sh (scripts/test does)",
        dir.display()
    );
    let version = std::fs::read_to_string(dir.join("version")).unwrap_or_default();
    (kernel, initrd, version.trim().to_string())
}

#[tokio::test]
async fn boots_to_a_shell_runs_a_command_and_powers_off() {
    let (kernel, initrd, version) = linux_guest();
    let scratch = Scratch::new();
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("pc")
            .accel(Accel::KvmOrTcg)
            .console(None, 0)
            .args(["-m", "256M", "-no-reboot"])
            .args(["-kernel", &kernel.display().to_string()])
            .args(["-initrd", &initrd.display().to_string()])
            .args(["-append", "console=ttyS0 quiet panic=-1"]),
    );
    vm.launch().await.unwrap();
    let console = vm.console().unwrap();
    console
        .expect_any(
            &"GUEST-READY".into(),
            &["Kernel panic".into()],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    console
        .expect("guest# ", Duration::from_secs(30))
        .await
        .unwrap();

    // The typed line is echoed as `$((6*7))`; only the shell's output says 42.
    let done = console
        .exec_and_expect(
            "uname -r; echo DONE-$((6*7))",
            "DONE-42",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        done.before.contains(&version),
        "{:?} lacks {version}",
        done.before
    );

    vm.cmd("system_powerdown", json!({})).await.unwrap();
    vm.event_wait(
        "SHUTDOWN",
        Some(json!({"data": {"guest": true}})),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    vm.wait(Duration::from_secs(60)).await.unwrap();
    assert!(vm.exit_status().unwrap().success());
}
