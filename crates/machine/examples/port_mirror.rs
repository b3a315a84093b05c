//! Port of an iotests-style mirror test with a golden log (`qmp_log` + `run_job`).
use std::time::Duration;

use qemu_machine::job::{run_job, JobOptions};
use qemu_machine::qmp_log::{filter_timestamps, QmpLog};
use qemu_machine::{Machine, Report};
use serde_json::json;

const GOLDEN: &str = include_str!("port_mirror.out");

#[tokio::main]
async fn main() -> Result<(), Report> {
    let dir = tempfile::tempdir()?;
    let node = |name: &str| {
        format!(
            "file,node-name={name},filename={}/{name}.img",
            dir.path().display()
        )
    };
    for name in ["src", "dst"] {
        std::fs::write(dir.path().join(format!("{name}.img")), vec![0u8; 1 << 20])?;
    }
    let mut vm = Machine::new(Machine::builder("qemu-system-x86_64").args([
        "-blockdev",
        &node("src"),
        "-blockdev",
        &node("dst"),
    ]));
    vm.launch().await?;
    let mut log = QmpLog::new().with_filter(filter_timestamps);
    log.execute(
        &mut vm,
        "blockdev-mirror",
        json!({"job-id": "job0", "device": "src", "target": "dst", "sync": "full"}),
    )
    .await?;
    log.log(&json!({"job0": run_job(&mut vm, "job0", JobOptions::default(), Duration::from_secs(30)).await?}));
    vm.shutdown().await?;
    print!("{}", log.text());
    if log.text() != GOLDEN {
        Err(std::io::Error::other(
            "the log differs from port_mirror.out",
        ))?
    }
    Ok(())
}
