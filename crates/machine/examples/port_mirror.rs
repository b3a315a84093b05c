//! Port of an iotests-style mirror test with a golden log (`qmp_log` + `run_job`).
use std::time::Duration;

use qemu_machine::job::{run_job, JobOptions};
use qemu_machine::qmp_log::{filter_timestamps, QmpLog};
use qemu_machine::{Machine, Report};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Report> {
    let (dir, mut builder) = (tempfile::tempdir()?, Machine::builder("qemu-system-x86_64"));
    for name in ["src", "dst"] {
        let file = dir.path().join(format!("{name}.img"));
        std::fs::write(&file, vec![0u8; 1 << 20])?;
        let node = format!("file,node-name={name},filename={}", file.display());
        builder = builder.args(["-blockdev".into(), node]);
    }
    let mut vm = Machine::new(builder);
    vm.launch().await?;
    let mut log = QmpLog::new().with_filter(filter_timestamps);
    let mirror = json!({"job-id": "job0", "device": "src", "target": "dst", "sync": "full"});
    log.execute(&mut vm, "blockdev-mirror", mirror).await?;
    let t = Duration::from_secs(30);
    let states = run_job(&mut vm, "job0", JobOptions::default(), t).await?;
    log.log(&json!({ "job0": states }));
    vm.shutdown().await?;
    assert_eq!(
        log.text(),
        include_str!("port_mirror.out"),
        "the golden log"
    );
    Ok(())
}
