//! The Linux test guest (Debian cloud kernel + busybox initramfs, built by
//! `guests/build-linux-guest.sh`): boot to a shell on ttyS0, run a command, power off
//! through ACPI. Not skipped when the guest is missing: it fails and says how to build it.

use qemu_test_support::machine as common;

use std::time::Duration;

use common::{linux_guest, wait_for_shell, Scratch};
use qemu_machine::Machine;
use serde_json::json;

#[tokio::test]
async fn boots_to_a_shell_runs_a_command_and_powers_off() {
    let scratch = Scratch::new();
    let (builder, version) = linux_guest(&scratch);
    let mut vm = Machine::new(builder);
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    // The typed line is echoed as `$((6*7))`; only the shell's output says 42.
    let done = vm
        .console()
        .unwrap()
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
