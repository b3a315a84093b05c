//! Every path through a machine's life, failures included, leaves no fd, QEMU child or run
//! dir behind. One test in its own binary, so nothing else blurs the count.

use qemu_test_support::machine as common;

use std::time::{Duration, Instant};

use common::{open_fds, qemu_children, Scratch, T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemu_machine::{Machine, Monitor};
use serde_json::json;

async fn every_path(scratch: &Scratch) {
    for monitor in [
        Monitor::Socketpair,
        Monitor::Unix("qmp.sock".into()),
        Monitor::Tcp("127.0.0.1".into(), 0),
    ] {
        let mut vm = Machine::new(
            scratch
                .builder()
                .machine_type("none")
                .monitor(monitor)
                .console(None, 0),
        );
        vm.launch().await.unwrap();
        vm.cmd("query-status", json!({})).await.unwrap();
        vm.shutdown().await.unwrap();
    }
    // Launch failures.
    let mut bad = Machine::new(scratch.builder().args(["-bogus"]));
    bad.launch().await.unwrap_err();
    let mut hung = Machine::new(
        scratch
            .builder()
            .wrapper(["sleep", "60"])
            .launch_timeout(Duration::from_millis(200)),
    );
    hung.launch().await.unwrap_err();
    // Abnormal shutdown.
    let mut stopped = Machine::new(scratch.builder().machine_type("none"));
    stopped.launch().await.unwrap();
    kill(
        Pid::from_raw(stopped.pid().unwrap() as i32),
        Signal::SIGSTOP,
    )
    .unwrap();
    stopped
        .shutdown_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    // Killed from outside.
    let mut killed = Machine::new(scratch.builder().machine_type("none"));
    killed.launch().await.unwrap();
    kill(Pid::from_raw(killed.pid().unwrap() as i32), Signal::SIGKILL).unwrap();
    killed.cmd("query-status", json!({})).await.unwrap_err();
    killed.shutdown().await.unwrap_err();
    // Dropped while running.
    let mut dropped = Machine::new(scratch.builder().machine_type("none"));
    dropped.launch().await.unwrap();
    drop(dropped);
}

#[test]
fn nothing_is_left_behind() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scratch = Scratch::new();
    // Warm up: the blocking pool's threads, the signal driver and the blocking runtime open their
    // descriptors once, for the life of the process.
    runtime.block_on(every_path(&scratch));
    let mut warm = qemu_machine::blocking::Machine::new(scratch.builder().machine_type("none"));
    warm.launch().unwrap();
    warm.shutdown().unwrap();
    let baseline = open_fds();

    for _ in 0..3 {
        runtime.block_on(every_path(&scratch));
    }
    let mut vm = qemu_machine::blocking::Machine::new(scratch.builder().machine_type("none"));
    vm.launch().unwrap();
    vm.shutdown().unwrap();

    let deadline = Instant::now() + T;
    loop {
        let fds = open_fds();
        let children = qemu_children();
        let dirs = scratch.entries();
        if fds <= baseline && children.is_empty() && dirs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: fds {baseline} -> {fds}, QEMU children {children:?}, run dirs {dirs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
