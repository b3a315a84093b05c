//! Port of an iotests-style mirror test with a golden log (`qmp_log` + `run_job_logged`):
//! `cargo run -p qemu-machine --example port_mirror` (QEMU from `$QEMU`).
use qemu_machine::{job::*, qmp_log::*, Machine, Report};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Report> {
    let dir = tempfile::tempdir()?;
    let mut vm = Machine::new(Machine::builder(qemu_test_support::qemu()));
    vm.launch().await?;
    let mut log = QmpLog::new().with_filter(filter_timestamps);
    log = log.with_filter(filter_test_paths(dir.path()));
    for name in ["src", "dst"] {
        let filename = dir.path().join(format!("{name}.img"));
        std::fs::write(&filename, vec![0u8; 1 << 20])?;
        let node = json!({"driver": "file", "node-name": name, "filename": filename});
        log.execute(&mut vm, "blockdev-add", node).await?;
    }
    let mirror = json!({"job-id": "job0", "device": "src", "target": "dst", "sync": "full"});
    log.execute(&mut vm, "blockdev-mirror", mirror).await?;
    let t = std::time::Duration::from_secs(30);
    run_job_logged(&mut vm, "job0", JobOptions::default(), t, &mut log).await?;
    vm.shutdown().await?;
    assert_eq!(log.text(), include_str!("port_mirror.out"));
    Ok(())
}
