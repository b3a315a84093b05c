//! Hostile input and faults (issue 13): huge durations, floods, odd files, hostile output,
//! secrets echoed back. Each test asserts the exact outcome and that nothing is left behind.

use qemu_test_support::machine as common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_gone, Scratch, T};
use qemu_machine::{guest, ErrorKind, LaunchReason, Machine};
use serde_json::json;

/// This process's resident set size, in KiB (from `/proc/self/status`).
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Pids of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == marker.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

fn huge() -> [Duration; 2] {
    [Duration::MAX, Duration::from_secs_f64(1e19)]
}

// 1. Deadlines saturate.

#[tokio::test]
async fn no_duration_reaches_a_panic() {
    let scratch = Scratch::new();
    for d in huge() {
        // Event waits, console expect and wait() on the built-in guest.
        let mut vm = Machine::new(scratch.builder().builtin_guest());
        vm.launch().await.unwrap();
        let pid = vm.pid().unwrap();
        vm.console().unwrap().expect(guest::BANNER, d).await.unwrap();
        vm.cmd("stop", json!({})).await.unwrap();
        vm.event_wait("STOP", None, d).await.unwrap();
        vm.cmd("cont", json!({})).await.unwrap();
        vm.events_wait(&[("RESUME", None), ("NEVER", Some(json!({})))], d)
            .await
            .unwrap();
        vm.cmd("system_powerdown", json!({})).await.unwrap();
        vm.event_wait("SHUTDOWN", None, d).await.unwrap();
        vm.wait(d).await.unwrap();
        assert!(vm.exit_status().unwrap().success());
        assert_gone(pid, T);

        // The shutdown ladder.
        let mut vm = Machine::new(scratch.builder().machine_type("none"));
        vm.launch().await.unwrap();
        let pid = vm.pid().unwrap();
        vm.shutdown_timeout(d).await.unwrap();
        assert_gone(pid, T);
    }
}
