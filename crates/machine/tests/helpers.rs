//! The helpers QEMU's test suites wrote by hand, against real QEMU: block jobs, migration,
//! hot-unplug, golden QMP logs, usernet port forwards, capability probes.

use qemu_test_support::machine as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{linux_guest, wait_for_shell, Scratch, T};
use qemu_machine::guest::BANNER;
use qemu_machine::job::{run_job, run_job_logged, JobOptions};
use qemu_machine::qmp_log::{
    filter_generated_node_names, filter_test_paths, filter_timestamps, QmpLog,
};
use qemu_machine::{hotplug, migration, usernet, ErrorKind, Machine, Probe};
use serde_json::json;

fn qemu_img(args: &[&str]) {
    let status = Command::new(qemu_test_support::qemu_img())
        .args(args)
        .status()
        .expect("qemu-img (package qemu-utils)");
    assert!(status.success(), "qemu-img {args:?}");
}

/// A machine with a 16 MiB qcow2 `src` and an empty `dst` node to mirror into.
async fn mirror_setup(scratch: &Scratch, images: &Path, target: serde_json::Value) -> Machine {
    let src = images.join("src.qcow2");
    let dst = images.join("dst.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", dst.to_str().unwrap(), "16M"]);
    let mut vm = Machine::new(scratch.builder().machine_type("none").args([
        "-blockdev".to_string(),
        format!("driver=file,filename={},node-name=src-file", src.display()),
        "-blockdev".to_string(),
        "driver=qcow2,file=src-file,node-name=src".to_string(),
    ]));
    vm.launch().await.unwrap();
    let mut file = json!({"driver": "file", "filename": dst.to_str().unwrap()});
    if !target.is_null() {
        file = json!({"driver": "blkdebug", "image": file, "inject-error": target});
    }
    vm.cmd(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "dst", "file": file}),
    )
    .await
    .unwrap();
    vm
}

fn mirror(job: &str) -> serde_json::Value {
    json!({"job-id": job, "device": "src", "target": "dst", "sync": "full",
           "auto-finalize": false, "auto-dismiss": false})
}

#[tokio::test]
async fn run_job_drives_a_mirror_from_ready_to_gone() {
    let scratch = Scratch::new();
    let images = tempfile::tempdir().unwrap();
    let mut vm = mirror_setup(&scratch, images.path(), serde_json::Value::Null).await;
    vm.cmd("blockdev-mirror", mirror("job0")).await.unwrap();
    let options = JobOptions {
        auto_finalize: false,
        auto_dismiss: false,
        cancel: false,
    };
    let seen = run_job(&mut vm, "job0", options, T).await.unwrap();
    for status in ["ready", "pending", "concluded", "null"] {
        assert!(
            seen.iter().any(|s| s == status),
            "{status} missing from {seen:?}"
        );
    }
    assert_eq!(vm.cmd("query-jobs", json!({})).await.unwrap(), json!([]));

    // The same, cancelled at `ready`.
    vm.cmd("blockdev-mirror", mirror("job1")).await.unwrap();
    let cancel = JobOptions {
        cancel: true,
        ..options
    };
    run_job(&mut vm, "job1", cancel, T).await.unwrap();
    vm.shutdown().await.unwrap();
}

/// What iotests' `run_job(..., use_log=True)` writes for a mirror that is completed,
/// finalized and dismissed by hand; the same on QEMU 7.2 and 10.0.
const MIRROR_GOLDEN: &str = r#"{"arguments": {"driver": "qcow2", "file": {"driver": "file", "filename": "TEST_DIR/dst.qcow2"}, "node-name": "dst"}, "execute": "blockdev-add"}
{"return": {}}
{"arguments": {"auto-dismiss": false, "auto-finalize": false, "device": "src", "job-id": "job0", "sync": "full", "target": "dst"}, "execute": "blockdev-mirror"}
{"return": {}}
{"arguments": {"id": "job0"}, "execute": "job-complete"}
{"return": {}}
{"data": {"device": "job0", "len": 16777216, "offset": 16777216, "speed": 0, "type": "mirror"}, "event": "BLOCK_JOB_READY", "timestamp": {"microseconds": "USECS", "seconds": "SECS"}}
{"arguments": {"id": "job0"}, "execute": "job-finalize"}
{"return": {}}
{"data": {"id": "job0", "type": "mirror"}, "event": "BLOCK_JOB_PENDING", "timestamp": {"microseconds": "USECS", "seconds": "SECS"}}
{"data": {"device": "job0", "len": 16777216, "offset": 16777216, "speed": 0, "type": "mirror"}, "event": "BLOCK_JOB_COMPLETED", "timestamp": {"microseconds": "USECS", "seconds": "SECS"}}
{"arguments": {"id": "job0"}, "execute": "job-dismiss"}
{"return": {}}
"#;

#[tokio::test]
async fn run_job_logged_writes_an_iotests_golden_log() {
    let scratch = Scratch::new();
    let images = tempfile::tempdir().unwrap();
    let src = images.path().join("src.qcow2");
    let dst = images.path().join("dst.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", dst.to_str().unwrap(), "16M"]);
    let mut vm = Machine::new(scratch.builder().machine_type("none").args([
        "-blockdev".to_string(),
        format!("driver=file,filename={},node-name=src-file", src.display()),
        "-blockdev".to_string(),
        "driver=qcow2,file=src-file,node-name=src".to_string(),
    ]));
    vm.launch().await.unwrap();
    let mut log = QmpLog::new()
        .with_filter(filter_timestamps)
        .with_filter(filter_test_paths(images.path()));
    let file = json!({"driver": "file", "filename": dst});
    log.execute(
        &mut vm,
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "dst", "file": file}),
    )
    .await
    .unwrap();
    log.execute(&mut vm, "blockdev-mirror", mirror("job0"))
        .await
        .unwrap();
    let options = JobOptions {
        auto_finalize: false,
        auto_dismiss: false,
        cancel: false,
    };
    let events = run_job_logged(&mut vm, "job0", options, T, &mut log)
        .await
        .unwrap();
    assert_eq!(log.text(), MIRROR_GOLDEN);

    // The job's events, returned and in the history.
    let statuses: Vec<String> = events
        .iter()
        .filter(|e| e.name() == "JOB_STATUS_CHANGE")
        .map(|e| e.data()["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        statuses,
        [
            "created",
            "running",
            "ready",
            "waiting",
            "pending",
            "concluded",
            "null"
        ]
    );
    let names = |events: &[qemu_machine::qmp::Event]| -> Vec<String> {
        events.iter().map(|e| e.name().to_string()).collect()
    };
    let history = vm.event_history();
    let job_events: Vec<_> = history
        .iter()
        .filter(|e| e.data()["id"] == "job0" || e.data()["device"] == "job0")
        .cloned()
        .collect();
    assert_eq!(names(&job_events), names(&events));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_job_surfaces_a_job_error() {
    let scratch = Scratch::new();
    let images = tempfile::tempdir().unwrap();
    // Every write to the target fails with EIO.
    let inject = json!([{"event": "write_aio", "errno": 5}]);
    let mut vm = mirror_setup(&scratch, images.path(), inject).await;
    let mut arguments = mirror("bad");
    arguments["on-target-error"] = json!("report");
    // A non-empty source, so the mirror has something to write.
    vm.cmd(
        "human-monitor-command",
        json!({"command-line": "qemu-io src \"write -P 0x5a 0 64k\""}),
    )
    .await
    .unwrap();
    vm.cmd("blockdev-mirror", arguments).await.unwrap();
    let options = JobOptions {
        auto_finalize: false,
        auto_dismiss: false,
        cancel: false,
    };
    let mut log = QmpLog::new().with_filter(filter_timestamps);
    let err = run_job_logged(&mut vm, "bad", options, T, &mut log)
        .await
        .unwrap_err();
    let ErrorKind::Job { job, message, .. } = err.kind() else {
        panic!("{err}")
    };
    assert_eq!(job, "bad");
    assert!(
        message.contains("Input/output error") || message.contains("error"),
        "{err}"
    );
    // As iotests: the error event, then "Job failed: ..." when the job aborts.
    let text = log.text();
    assert!(text.contains("\"event\": \"BLOCK_JOB_ERROR\""), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("Job failed: ")),
        "{text}"
    );
    vm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_of_the_builtin_guest_keeps_its_console_working() {
    let scratch = Scratch::new();
    let sockets = tempfile::tempdir().unwrap();
    let uri = format!("unix:{}", sockets.path().join("migrate.sock").display());
    let mut source = Machine::new(scratch.builder().name("source").builtin_guest());
    let mut destination = Machine::new(
        scratch
            .builder()
            .name("destination")
            .builtin_guest()
            .args(["-incoming", "defer"]),
    );
    source.launch().await.unwrap();
    destination.launch().await.unwrap();
    source.console().unwrap().expect(BANNER, T).await.unwrap();

    let mut reports = 0;
    migration::migrate(&mut source, &mut destination, &uri, T, |_| reports += 1)
        .await
        .unwrap();
    assert!(reports > 0);
    let status = source.cmd("query-status", json!({})).await.unwrap();
    assert_eq!(status["status"], "postmigrate");

    // The guest now runs on the destination and echoes there.
    let console = destination.console().unwrap();
    console
        .exec_and_expect("moved", "moved\n", T)
        .await
        .unwrap();
    source.shutdown().await.unwrap();
    destination.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_migration_is_an_error() {
    let scratch = Scratch::new();
    let sockets = tempfile::tempdir().unwrap();
    let mut source = Machine::new(scratch.builder().builtin_guest());
    // Not the same machine type (q35 set after builtin_guest() replaces its pc): the
    // destination cannot take the state.
    let mut destination = Machine::new(
        scratch
            .builder()
            .builtin_guest()
            .machine_type("q35")
            .args(["-incoming", "defer"]),
    );
    source.launch().await.unwrap();
    destination.launch().await.unwrap();
    let uri = format!("unix:{}", sockets.path().join("m.sock").display());
    let err = migration::migrate(&mut source, &mut destination, &uri, T, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Migration { .. }), "{err}");
    source.shutdown().await.unwrap();
    let _ = destination.shutdown().await;
}

#[tokio::test]
async fn hot_unplug_of_a_virtio_disk_from_linux() {
    let scratch = Scratch::new();
    let images = tempfile::tempdir().unwrap();
    let disk = images.path().join("disk.img");
    qemu_img(&["create", "-q", "-f", "raw", disk.to_str().unwrap(), "8M"]);
    let (builder, _) = linux_guest(&scratch);
    let mut vm = Machine::new(builder.args([
        "-drive".to_string(),
        format!("if=none,id=d1,file={},format=raw", disk.display()),
        "-device".to_string(),
        "virtio-blk-pci,id=vblk1,drive=d1".to_string(),
    ]));
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    vm.console()
        .unwrap()
        .exec_and_expect("ls /sys/block; echo LS-$((1+1))", "LS-2", T)
        .await
        .unwrap();
    let event = hotplug::device_del(&mut vm, "vblk1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(event.data()["device"], "vblk1");
    let peripherals = vm
        .cmd("qom-list", json!({"path": "/machine/peripheral"}))
        .await
        .unwrap();
    assert!(!peripherals.to_string().contains("vblk1"), "{peripherals}");
    // No stale duplicate is left for a later wait.
    assert!(vm
        .get_qmp_events()
        .iter()
        .all(|e| e.name() != "DEVICE_DELETED" || e.data()["device"] != "vblk1"));
    vm.shutdown().await.unwrap();
}

/// QEMU 9.0 removed `query-status`'s deprecated `singlestep`: the log leaves it out so that
/// it reads the same on every version, as iotests filter version-dependent output.
fn without_singlestep(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(status) = value.get_mut("return").and_then(|r| r.as_object_mut()) {
        status.remove("singlestep");
    }
    value
}

#[tokio::test]
async fn a_golden_qmp_log() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("pc").args(["-S"]));
    vm.launch().await.unwrap();
    let mut log = QmpLog::new()
        .with_filter(filter_timestamps)
        .with_filter(filter_generated_node_names)
        .with_filter(without_singlestep);
    log.execute(&mut vm, "query-status", serde_json::Value::Null)
        .await
        .unwrap();
    log.execute(&mut vm, "no-such-command", json!({"b": 1, "a": 2}))
        .await
        .unwrap();
    log.execute(&mut vm, "cont", serde_json::Value::Null)
        .await
        .unwrap();
    let resume = vm.event_wait("RESUME", None, T).await.unwrap();
    log.log(&resume.to_json());
    assert_eq!(
        log.text(),
        "{\"execute\": \"query-status\"}\n\
         {\"return\": {\"running\": false, \"status\": \"prelaunch\"}}\n\
         {\"arguments\": {\"a\": 2, \"b\": 1}, \"execute\": \"no-such-command\"}\n\
         {\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command no-such-command has not been found\"}}\n\
         {\"execute\": \"cont\"}\n\
         {\"return\": {}}\n\
         {\"event\": \"RESUME\", \"timestamp\": {\"microseconds\": \"USECS\", \"seconds\": \"SECS\"}}\n"
    );
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn usernet_host_forward_port_lookup() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("pc").args([
        "-S",
        "-netdev",
        "user,id=n0,hostfwd=tcp:127.0.0.1:0-:22",
        "-device",
        "e1000,netdev=n0",
    ]));
    vm.launch().await.unwrap();
    let port = usernet::machine_hostfwd_port(&mut vm).await.unwrap();
    assert!(port > 0);
    // Slirp really listens there.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn probes_are_answered_and_cached() {
    let probe = Probe::of(&common::qemu()).await.unwrap();
    assert!(probe.version.0 >= 7, "{probe:?}");
    assert!(probe.tcg_available());
    assert!(probe.has_machine("pc") && probe.has_machine("q35") && probe.has_machine("none"));
    assert!(probe.has_device("virtio-blk-pci") && probe.has_device("isa-debug-exit"));
    if qemu_machine::is_kvm_pvm() {
        assert!(!probe.kvm_usable(), "kvm-pvm must not count as usable KVM");
    }
    let again = Probe::of(&common::qemu()).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&probe, &again));
    assert!(Probe::of("/nonexistent/qemu").await.is_err());
}
