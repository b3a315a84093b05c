//! A manager that dies leaves no QEMU behind: the test re-runs its own binary as a manager
//! that launches 10 VMs, SIGKILLs that manager, and checks every QEMU is gone within a
//! second.

use qemu_test_support::machine as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const HELPER_ENV: &str = "QEMU_MACHINE_ORPHAN_HELPER_DIR";

const VMS: usize = 10;

/// Acts only when run as the helper: launches 10 VMs, prints their pids, and waits to be
/// killed.
#[test]
fn orphan_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut vms: Vec<qemu_machine::Machine> = (0..VMS)
        .map(|_| {
            qemu_machine::Machine::new(
                qemu_machine::Machine::builder(qemu())
                    .base_temp_dir(&dir)
                    .machine_type("none")
                    .args(["-nodefaults"]),
            )
        })
        .collect();
    for result in runtime.block_on(qemu_machine::fleet::launch_all(&mut vms)) {
        result.expect("launch");
    }
    let pids: Vec<String> = vms
        .iter()
        .map(|vm| vm.pid().expect("pid").to_string())
        .collect();
    println!("QEMU-PIDS {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
}

/// Dead or a zombie: either way not running any more.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z')),
    }
}

#[test]
fn a_killed_manager_leaves_no_qemu_running() {
    let scratch = tempfile::tempdir().unwrap();
    let mut manager = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = manager.stdout.take().unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test orphan_helper ... " on the same line first.
        if let Some((_, list)) = line.split_once("QEMU-PIDS ") {
            pids = list
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap())
                .collect();
            break;
        }
    }
    assert_eq!(pids.len(), VMS, "the manager printed its QEMUs' pids");
    assert!(pids.iter().all(|&pid| !dead(pid)));

    kill(Pid::from_raw(manager.id() as i32), Signal::SIGKILL).unwrap();
    manager.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    for pid in pids {
        while !dead(pid) {
            assert!(
                Instant::now() < deadline,
                "QEMU {pid} outlived its manager by 1 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The SIGKILLed manager could not remove its run dirs; the scratch dir takes them.
}
