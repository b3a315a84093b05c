//! `qemu-machine migrate` and `qemu-machine job` against real QEMU: a progress bar on a
//! terminal, nothing on stderr otherwise, the outcome as JSON and in the exit status.

use std::process::Command;

use qemu_test_support::cli::{output_with_input, OnPty, Qemu};

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qemu-machine"));
    command.env_remove("QMP_SOCKET");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A QEMU started with `-incoming unix:PATH`, once it listens there (it makes its QMP
/// socket first).
fn destination(incoming: &std::path::Path) -> Qemu {
    let qemu = Qemu::start(&[
        "-machine",
        "pc",
        "-m",
        "128",
        "-incoming",
        &format!("unix:{}", incoming.display()),
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !incoming.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU made no incoming socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    qemu
}

fn exec(qemu: &Qemu, args: &[&str]) -> String {
    let out = output_with_input(bin().arg("exec").arg(qemu.address()).args(args), b"");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A QEMU with a 24 MiB file of data as node `src`, and a node `tgt` to copy it to.
fn qemu_with_nodes(dir: &std::path::Path) -> Qemu {
    let (src, tgt) = (dir.join("src.img"), dir.join("tgt.img"));
    let data: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(&src, data).unwrap();
    std::fs::write(&tgt, vec![0u8; 24 << 20]).unwrap();
    let qemu = Qemu::start(&[
        "-machine",
        "none",
        "-blockdev",
        &format!("driver=file,filename={},node-name=src", src.display()),
        "-blockdev",
        &format!("driver=file,filename={},node-name=tgt", tgt.display()),
    ]);
    qemu
}

#[test]
fn job_shows_progress_on_a_terminal_and_prints_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = qemu_with_nodes(dir.path());
    // 24 MiB at 12 MiB/s: about two seconds to watch.
    exec(
        &qemu,
        &[
            "blockdev-backup",
            "job-id=copy",
            "device=src",
            "target=tgt",
            "sync=full",
            "speed=12582912",
        ],
    );
    let mut job = OnPty::spawn(bin().args(["job", qemu.address(), "copy"]));
    let status = job.wait();
    let output = job.output();
    assert!(status.success(), "{output}");
    assert!(output.contains("copy (running) ["), "{output}");
    assert!(output.contains("MiB of 24.00 MiB"), "{output}");
    assert!(output.contains("\"device\":\"copy\""), "{output}");
    assert!(output.contains("\"offset\":25165824"), "{output}");
    assert_eq!(
        std::fs::read(dir.path().join("tgt.img")).unwrap(),
        std::fs::read(dir.path().join("src.img")).unwrap()
    );
}

#[test]
fn job_ready_returns_once_a_mirror_is_in_sync_and_is_silent_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = qemu_with_nodes(dir.path());
    exec(
        &qemu,
        &[
            "blockdev-mirror",
            "job-id=m",
            "device=src",
            "target=tgt",
            "sync=full",
        ],
    );
    let out = output_with_input(bin().args(["job", qemu.address(), "--ready"]), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["device"], "m");
    // Still there, ready to complete.
    assert!(exec(&qemu, &["query-block-jobs"]).contains("\"ready\":true"));
}

#[test]
fn job_without_a_job_or_past_its_deadline_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = qemu_with_nodes(dir.path());
    let out = output_with_input(bin().args(["job", qemu.address()]), b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no block job is running"),
        "{}",
        text(&out.stderr)
    );
    // 1 MiB/s: 24 s, far past a 0.5 s deadline.
    exec(
        &qemu,
        &[
            "blockdev-backup",
            "job-id=slow",
            "device=src",
            "target=tgt",
            "sync=full",
            "speed=1048576",
        ],
    );
    let out = output_with_input(
        bin().args(["job", qemu.address(), "slow", "--timeout", "0.5"]),
        b"",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains("block job slow not done after 0.5 s"),
        "{stderr}"
    );
    assert!(stderr.contains("it goes on"), "{stderr}");
}

#[test]
fn migrate_shows_progress_on_a_terminal_and_the_destination_runs() {
    let dir = tempfile::tempdir().unwrap();
    let incoming = dir.path().join("mig.sock");
    let destination = destination(&incoming);
    let source = Qemu::start(&["-machine", "pc", "-m", "128"]);
    // Slow enough to draw a bar: 128 MiB of mostly zero pages still takes a moment.
    exec(
        &source,
        &["migrate-set-parameters", "max-bandwidth=33554432"],
    );
    let uri = format!("unix:{}", incoming.display());
    let mut migrate = OnPty::spawn(bin().args(["migrate", source.address(), &uri]));
    let status = migrate.wait();
    let output = migrate.output();
    assert!(status.success(), "{output}");
    assert!(output.contains("migrating ("), "{output}");
    assert!(output.contains("\"status\":\"completed\""), "{output}");
    assert!(exec(&destination, &["query-status"]).contains("\"running\":true"));
}

#[test]
fn migrate_failure_and_deadline_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let source = Qemu::start(&["-machine", "pc", "-m", "128"]);
    let nowhere = format!("unix:{}", dir.path().join("nobody.sock").display());
    let out = output_with_input(bin().args(["migrate", source.address(), &nowhere]), b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(stderr.contains("qemu-machine: migrat"), "{stderr}");

    // A destination that never reads: the migration stalls once the socket is full.
    let stalled = dir.path().join("stalled.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&stalled).unwrap();
    let uri = format!("unix:{}", stalled.display());
    let out = output_with_input(
        bin().args(["migrate", source.address(), &uri, "--timeout", "0.5"]),
        b"",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("not completed after 0.5 s"), "{stderr}");
    assert!(stderr.contains("it was cancelled"), "{stderr}");
    let status = exec(&source, &["query-migrate"]);
    assert!(status.contains("cancel"), "{status}");
}
