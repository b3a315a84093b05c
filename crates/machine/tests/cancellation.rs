//! Cancel-safety: the future of `launch`, `wait` or `shutdown_timeout` dropped at an
//! `await` (here by `tokio::time::timeout`) leaves the machine owning QEMU: `pid()` still
//! answers while QEMU lives, and dropping the machine kills and reaps QEMU and removes the
//! run dir. The tests run one at a time: the launch test counts this process's QEMUs.

use qemu_test_support::machine as common;

use std::time::Duration;

use common::{assert_gone, group_alive, qemu_children, Scratch, T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemu_machine::{Error, ErrorKind, Machine};
use serde_json::json;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Drops `vm` (which must own a live QEMU) and checks that QEMU's group is gone (reaped:
/// a zombie would still be in it) and the run dir removed.
fn drop_and_check(vm: Machine) {
    let pid = vm.pid().expect("the machine still owns QEMU");
    assert!(group_alive(pid), "QEMU {pid} should still live");
    let run_dir = vm
        .run_dir()
        .expect("a run dir while QEMU lives")
        .to_path_buf();
    assert!(run_dir.is_dir());
    drop(vm);
    assert_gone(pid, Duration::from_millis(500));
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[tokio::test]
async fn a_dropped_wait_keeps_qemu_owned_and_usable() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    // machine "none" never exits by itself: the wait can only be cut short.
    let cut = tokio::time::timeout(Duration::from_millis(50), vm.wait(T)).await;
    assert!(cut.is_err(), "the wait returned: {cut:?}");
    assert_eq!(vm.pid(), Some(pid));
    assert!(vm.is_running());
    // Still fully usable: the phase did not move.
    vm.cmd("query-status", json!({})).await.unwrap();
    drop_and_check(vm);
}

#[tokio::test]
async fn a_dropped_shutdown_of_a_stopped_qemu_keeps_it_owned() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    // Stopped, QEMU answers no `quit`: the shutdown hangs on it until cut short.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(100), vm.shutdown_timeout(T)).await;
    assert!(cut.is_err(), "the shutdown returned: {cut:?}");
    assert_eq!(vm.pid(), Some(pid));
    drop_and_check(vm);
}

#[tokio::test]
async fn a_dropped_shutdown_can_be_finished_by_kill() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(100), vm.shutdown_timeout(T)).await;
    assert!(cut.is_err(), "the shutdown returned: {cut:?}");
    vm.kill().await.unwrap();
    assert_eq!(vm.pid(), None);
    assert!(vm.exit_status().is_some());
    assert_gone(pid, Duration::from_millis(100));
}

#[tokio::test]
async fn a_dropped_launch_never_orphans_qemu() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scratch = Scratch::new();
    // From before the spawn to the middle of the QMP handshake.
    for micros in [
        0, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    ] {
        let mut vm = Machine::new(scratch.builder().machine_type("none"));
        let cut = tokio::time::timeout(Duration::from_micros(micros), vm.launch()).await;
        match (cut, vm.pid()) {
            (Ok(result), _) => {
                result.unwrap();
                vm.shutdown().await.unwrap();
            }
            (Err(_), Some(_)) => {
                // Spawned: QEMU belongs to the machine, which cannot launch it twice.
                assert!(matches!(
                    vm.launch().await.map_err(Error::into_kind),
                    Err(ErrorKind::AlreadyRunning)
                ));
                drop_and_check(vm);
            }
            (Err(_), None) => {
                // Cut before the spawn finished: any QEMU spawned meanwhile is killed and
                // reaped by the spawner, and no run dir is left (checked by `scratch`).
                // The spawner may not have got to the request yet: give it time first.
                drop(vm);
                tokio::time::sleep(Duration::from_millis(200)).await;
                let deadline = std::time::Instant::now() + T;
                while !qemu_children().is_empty() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "orphaned QEMU: {:?}",
                        qemu_children()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        assert!(
            qemu_children().is_empty(),
            "after {micros}µs: {:?}",
            qemu_children()
        );
    }
}
