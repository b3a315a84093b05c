//! A manager that dies leaves no QEMU behind: the test re-runs its own binary as a manager
//! that launches a VM, SIGKILLs that manager, and checks QEMU is gone within a second.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::QEMU;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const HELPER_ENV: &str = "QEMU_MACHINE_ORPHAN_HELPER_DIR";

/// Acts only when run as the helper: launches a VM, prints its pid, and waits to be killed.
#[test]
fn orphan_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut vm = qemu_machine::blocking::Machine::new(
        qemu_machine::Machine::builder(QEMU)
            .base_temp_dir(dir)
            .machine_type("none")
            .args(["-nodefaults"]),
    );
    vm.launch().expect("launch");
    println!("QEMU-PID {}", vm.pid().expect("pid"));
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
    let mut qemu_pid = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints "test orphan_helper ... " on the same line first.
        if let Some((_, pid)) = line.split_once("QEMU-PID ") {
            qemu_pid = Some(pid.trim().parse::<u32>().unwrap());
            break;
        }
    }
    let qemu_pid = qemu_pid.expect("the manager printed QEMU's pid");
    assert!(!dead(qemu_pid));

    kill(Pid::from_raw(manager.id() as i32), Signal::SIGKILL).unwrap();
    manager.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while !dead(qemu_pid) {
        assert!(
            Instant::now() < deadline,
            "QEMU {qemu_pid} outlived its manager by 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
