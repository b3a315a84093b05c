//! A manager that dies leaves no QEMU behind: the test re-runs its own binary as a manager
//! that launches VMs (plain, or under a wrapper that forks QEMU, or one whose QEMU leaves
//! its process group with `setsid`), SIGKILLs that manager, and checks that every QEMU,
//! every wrapper and every watchdog is gone within a bounded time.

use qemu_test_support::machine as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemu_test_support::processes::{all_processes, dead, processes_with_arg, WATCHDOG_COMM};

const HELPER_ENV: &str = "QEMU_MACHINE_ORPHAN_HELPER_DIR";
const WRAPPER_ENV: &str = "QEMU_MACHINE_ORPHAN_HELPER_WRAPPER";
const MARKER_ENV: &str = "QEMU_MACHINE_ORPHAN_HELPER_MARKER";
const COUNT_ENV: &str = "QEMU_MACHINE_ORPHAN_HELPER_COUNT";

/// Acts only when run as the helper: launches the VMs (under the wrapper given as a
/// list separated by U+001F, if any), prints their pids, and waits to be killed.
#[test]
fn orphan_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let wrapper: Vec<String> = std::env::var(WRAPPER_ENV)
        .unwrap_or_default()
        .split('\u{1f}')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let marker = std::env::var(MARKER_ENV).expect("marker");
    let count: usize = std::env::var(COUNT_ENV).expect("count").parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut vms: Vec<qemu_machine::Machine> = (0..count)
        .map(|_| {
            let mut builder = qemu_machine::Machine::builder(qemu())
                .base_temp_dir(&dir)
                .machine_type("none")
                .args(["-nodefaults", "-name", &marker]);
            if !wrapper.is_empty() {
                builder = builder.wrapper(wrapper.clone());
            }
            qemu_machine::Machine::new(builder)
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

/// Runs a manager with `count` VMs under `wrapper`, SIGKILLs it once they run, and checks
/// that QEMU, the wrappers and the watchdogs are all gone within `bound`.
fn kill_the_manager(wrapper: &[&str], count: usize, bound: Duration) {
    let scratch = tempfile::tempdir().unwrap();
    let marker = format!(
        "orphan-marker-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut manager = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, scratch.path())
        .env(WRAPPER_ENV, wrapper.join("\u{1f}"))
        .env(MARKER_ENV, &marker)
        .env(COUNT_ENV, count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let manager_pid = manager.id();
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
    let killed = || {
        let _ = kill(Pid::from_raw(manager_pid as i32), Signal::SIGKILL);
    };
    if pids.len() != count {
        killed();
        panic!("the manager printed {} pids, not {count}", pids.len());
    }
    // What the manager started: one watchdog per VM, its child (the pid reported), and
    // the QEMU processes (under the wrapper when there is one).
    let everything = all_processes();
    let watchdogs: Vec<u32> = everything
        .iter()
        .filter(|p| p.ppid == manager_pid && p.comm == WATCHDOG_COMM)
        .map(|p| p.pid)
        .collect();
    let qemus: Vec<u32> = everything
        .iter()
        .filter(|p| p.comm.starts_with("qemu-system"))
        .filter(|p| processes_with_arg(&marker).contains(&p.pid))
        .map(|p| p.pid)
        .collect();
    let contained = processes_with_arg(&marker);
    let running = pids.iter().all(|&pid| !dead(pid));
    if watchdogs.len() != count || qemus.len() != count || !running {
        killed();
        panic!(
            "before the kill: {} watchdogs, {} QEMUs ({qemus:?}), reported pids running: {running}",
            watchdogs.len(),
            qemus.len()
        );
    }

    killed();
    manager.wait().unwrap();
    let deadline = Instant::now() + bound;
    for pid in pids
        .iter()
        .chain(&watchdogs)
        .chain(&qemus)
        .chain(&contained)
    {
        while !dead(*pid) {
            assert!(
                Instant::now() < deadline,
                "{pid} outlived its manager by {bound:?}: {:?}",
                qemu_test_support::processes::proc_stat(*pid)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let left = processes_with_arg(&marker);
    assert!(left.is_empty(), "still running with the marker: {left:?}");
    // The SIGKILLed manager could not remove its run dirs; the scratch dir takes them.
}

#[test]
fn a_killed_manager_leaves_no_qemu_running() {
    kill_the_manager(&[], 10, Duration::from_secs(1));
}

/// coreutils `timeout` forks QEMU and waits for it (the death signal reached only it).
#[test]
fn a_killed_manager_leaves_no_qemu_forked_by_timeout() {
    kill_the_manager(&["timeout", "600"], 3, Duration::from_secs(2));
}

/// A shell that starts QEMU in the background and waits.
#[test]
fn a_killed_manager_leaves_no_qemu_forked_by_a_shell() {
    kill_the_manager(
        &["sh", "-c", "\"$@\" & wait", "sh"],
        3,
        Duration::from_secs(2),
    );
}

/// `strace -f` forks QEMU and traces it.
#[test]
fn a_killed_manager_leaves_no_qemu_forked_by_strace() {
    assert!(
        Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "this test needs strace"
    );
    kill_the_manager(
        &["strace", "-f", "-o", "/dev/null"],
        3,
        Duration::from_secs(2),
    );
}

/// QEMU leaves the wrapper's process group (and session) with `setsid`: no group signal
/// reaches it; the watchdog (its subreaper) does.
#[test]
fn a_killed_manager_leaves_no_qemu_that_called_setsid() {
    kill_the_manager(
        &["sh", "-c", "setsid \"$@\" & wait", "sh"],
        3,
        Duration::from_secs(2),
    );
}
