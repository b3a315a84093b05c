//! Typed QMP on `Machine` against real QEMU: `call`, `cmd` without arguments,
//! `execute_and_wait` consuming its event, and the event history.

use qemu_test_support::machine as common;

use std::time::Duration;

use common::Scratch;
use qemu_machine::qmp::commands::{
    BlockJobSetSpeed, Cont, QueryCpusFast, QueryMachines, QueryStatus, RunState, Stop,
};
use qemu_machine::{ErrorKind, Machine};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn typed_calls_and_commands_without_arguments() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().builtin_guest());
    vm.launch().await.unwrap();
    let status = vm.call(&QueryStatus {}).await.unwrap();
    assert_eq!(status.status, RunState::Running);
    let stopped = vm.cmd("stop", ()).await.unwrap();
    assert_eq!(stopped, json!({}));
    assert_eq!(
        vm.call(&QueryStatus {}).await.unwrap().status,
        RunState::Paused
    );
    vm.call(&Cont {}).await.unwrap();
    let machines = vm.call(&QueryMachines {}).await.unwrap();
    assert!(
        machines.iter().any(|m| m.alias.as_deref() == Some("pc")),
        "{machines:?}"
    );
    let cpus = vm.call(&QueryCpusFast {}).await.unwrap();
    assert_eq!(cpus.len(), 1);
    assert_eq!(cpus[0].cpu_index, 0);
    // A typed command's QMP error is the machine's error, with its class.
    let err = vm
        .call(&BlockJobSetSpeed {
            device: "nope".into(),
            speed: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.qmp_class(), Some("DeviceNotActive"), "{err}");
    // qmp::Error converts into the machine's error.
    let converted: qemu_machine::Error = qemu_machine::qmp::Error::EventsLost(3).into();
    assert!(matches!(converted.kind(), ErrorKind::Qmp(_)));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn execute_and_wait_consumes_its_event_and_history_keeps_everything() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().builtin_guest().event_history(100));
    vm.launch().await.unwrap();
    let (value, event) = vm
        .execute_and_wait("stop", (), "STOP", None, T)
        .await
        .unwrap();
    assert_eq!((value, event.name()), (json!({}), "STOP"));
    // Consumed: a later wait does not get the stale copy.
    let err = vm
        .event_wait("STOP", None, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");

    // A RESUME that arrived before does not satisfy a wait started after it.
    vm.call(&Cont {}).await.unwrap();
    vm.call(&Stop {}).await.unwrap();
    let (_, resumed) = vm
        .execute_and_wait("cont", json!({}), "RESUME", None, T)
        .await
        .unwrap();
    // The earlier RESUME and the STOP are still queued, in order.
    let queued: Vec<String> = vm
        .get_qmp_events()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert_eq!(queued, ["RESUME", "STOP"]);
    assert!(resumed.timestamp().seconds > 0);

    // Consumed or not, every event is in the history, with both timestamps.
    let history = vm.event_history();
    let names: Vec<&str> = history.iter().map(|e| e.name()).collect();
    assert_eq!(names, ["STOP", "RESUME", "STOP", "RESUME"]);
    assert!(history
        .windows(2)
        .all(|w| w[0].received() <= w[1].received()));
    assert_eq!(vm.event_history_dropped(), 0);
    vm.shutdown().await.unwrap();
    assert!(vm.event_history().len() >= 4);
}

#[tokio::test]
async fn the_history_is_bounded() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().builtin_guest().event_history(2));
    vm.launch().await.unwrap();
    for _ in 0..3 {
        vm.execute_and_wait("stop", (), "STOP", None, T)
            .await
            .unwrap();
        vm.execute_and_wait("cont", (), "RESUME", None, T)
            .await
            .unwrap();
    }
    let names: Vec<String> = vm
        .event_history()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert_eq!(names, ["STOP", "RESUME"]);
    assert_eq!(vm.event_history_dropped(), 4);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_block_jobs_against_null_nodes() {
    use qemu_machine::qmp::commands::{
        BlockJobCancel, BlockJobComplete, BlockJobPause, BlockJobResume, BlockStream,
        BlockdevBackup, BlockdevMirror, QueryJobs, SyncMode,
    };
    let scratch = Scratch::new();
    let size = 64 * 1024 * 1024;
    let mut vm = Machine::new(scratch.builder().args([
        "-blockdev".to_string(),
        format!("null-co,node-name=src,size={size}"),
        "-blockdev".to_string(),
        format!("null-co,node-name=dst,size={size}"),
        "-blockdev".to_string(),
        format!("null-co,node-name=dst2,size={size}"),
    ]));
    vm.launch().await.unwrap();
    // A slow mirror: pause, resume, change speed, then cancel it.
    vm.call(&BlockdevMirror {
        job_id: Some("m".into()),
        device: "src".into(),
        target: "dst".into(),
        sync: SyncMode::Full,
        speed: Some(1024),
        ..Default::default()
    })
    .await
    .unwrap();
    let jobs = vm.call(&QueryJobs {}).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["m"]
    );
    vm.call(&BlockJobPause { device: "m".into() })
        .await
        .unwrap();
    vm.event_wait(
        "JOB_STATUS_CHANGE",
        Some(json!({"data": {"id": "m", "status": "paused"}})),
        T,
    )
    .await
    .unwrap();
    vm.call(&BlockJobResume { device: "m".into() })
        .await
        .unwrap();
    vm.call(&qemu_machine::qmp::commands::BlockJobSetSpeed {
        device: "m".into(),
        speed: 0,
    })
    .await
    .unwrap();
    vm.event_wait("BLOCK_JOB_READY", Some(json!({"data": {"device": "m"}})), T)
        .await
        .unwrap();
    vm.call(&BlockJobComplete { device: "m".into() })
        .await
        .unwrap();
    vm.event_wait(
        "BLOCK_JOB_COMPLETED",
        Some(json!({"data": {"device": "m"}})),
        T,
    )
    .await
    .unwrap();
    // A backup, cancelled while slow.
    vm.call(&BlockdevBackup {
        job_id: Some("b".into()),
        device: "src".into(),
        target: "dst2".into(),
        sync: SyncMode::Full,
        speed: Some(1024),
        ..Default::default()
    })
    .await
    .unwrap();
    vm.call(&BlockJobCancel {
        device: "b".into(),
        force: Some(true),
    })
    .await
    .unwrap();
    vm.event_wait(
        "BLOCK_JOB_CANCELLED",
        Some(json!({"data": {"device": "b"}})),
        T,
    )
    .await
    .unwrap();
    // block-stream on a node without a backing file is refused by QEMU, typed.
    let err = vm
        .call(&BlockStream {
            job_id: Some("s".into()),
            device: "src".into(),
            ..Default::default()
        })
        .await;
    // QEMU either runs a no-op stream or refuses it; both are typed answers.
    if let Err(e) = err {
        assert!(e.qmp_class().is_some(), "{e}");
    }
    vm.shutdown().await.unwrap();
}

#[test]
fn blocking_forms() {
    let scratch = Scratch::new();
    let mut vm = qemu_machine::blocking::Machine::new(scratch.builder().builtin_guest());
    vm.launch().unwrap();
    assert_eq!(vm.call(&QueryStatus {}).unwrap().status, RunState::Running);
    let (_, stop) = vm.execute_and_wait("stop", (), "STOP", None, T).unwrap();
    assert_eq!(stop.name(), "STOP");
    assert_eq!(vm.event_history().len(), 1);
    vm.shutdown().unwrap();
}
