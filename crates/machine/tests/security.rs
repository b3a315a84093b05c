//! The security basics: private run dirs and logs, loopback-only TCP monitors, names that
//! cannot escape, no shell anywhere, secrets kept out of logs, transcripts and errors.

use qemu_test_support::machine as common;

use std::os::unix::fs::PermissionsExt;

use common::Scratch;
use qemu_machine::{ErrorKind, KeepRunDir, Machine, Monitor};
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn run_dir_is_0700_and_everything_written_is_0600() {
    let scratch = Scratch::new();
    let logs = tempfile::tempdir().unwrap();
    let console_log = logs.path().join("console.log");
    let mut vm = Machine::new(
        scratch
            .builder()
            .name("private")
            .builtin_guest()
            .log_dir(logs.path())
            .console_log(&console_log)
            .qmp_transcript(true)
            .keep_run_dir(KeepRunDir::Always),
    );
    vm.launch().await.unwrap();
    let run_dir = vm.run_dir().unwrap().to_path_buf();
    assert_eq!(mode(&run_dir), 0o700);
    vm.shutdown().await.unwrap();
    assert_eq!(mode(&logs.path().join("private.log")), 0o600);
    assert_eq!(mode(&console_log), 0o600);
    assert_eq!(mode(&run_dir.join("qmp.log")), 0o600);
    std::fs::remove_dir_all(run_dir).unwrap();
}

#[tokio::test]
async fn a_tcp_monitor_binds_loopback_unless_told_otherwise() {
    let scratch = Scratch::new();
    for host in ["0.0.0.0", "::", "192.0.2.1"] {
        let mut vm = Machine::new(scratch.builder().monitor(Monitor::Tcp(host.into(), 0)));
        let err = vm.launch().await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Config(m) if m.contains("not loopback")),
            "{host}: {err}"
        );
    }
    for host in ["127.0.0.1", "localhost"] {
        let mut vm = Machine::new(
            scratch
                .builder()
                .machine_type("none")
                .monitor(Monitor::Tcp(host.into(), 0)),
        );
        vm.launch().await.unwrap();
        vm.shutdown().await.unwrap();
    }
    let mut explicit = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .monitor(Monitor::Tcp("0.0.0.0".into(), 0))
            .allow_remote_monitor(true),
    );
    explicit.launch().await.unwrap();
    explicit.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_shell_ever_reads_an_argument() {
    let scratch = Scratch::new();
    let marker = scratch.path().join("pwned");
    let trap = format!("$(touch {})", marker.display());
    let mut vm = Machine::new(
        scratch
            .builder()
            .name(format!(
                "x;touch {}",
                marker.file_name().unwrap().to_str().unwrap()
            ))
            .args([trap.as_str(), "`touch /tmp/qemu-machine-pwned`"]),
    );
    let err = vm.launch().await.unwrap_err();
    // QEMU received the text as it is, and said so.
    assert!(err.to_string().contains(&trap), "{err}");
    assert!(!marker.exists());
    assert!(!std::path::Path::new("/tmp/qemu-machine-pwned").exists());
}

#[tokio::test]
async fn secrets_stay_out_of_errors_logs_and_transcripts() {
    let scratch = Scratch::new();
    // A launch failure quotes the command line: without the secret.
    let mut bad = Machine::new(scratch.builder().args([
        "-object",
        "secret,id=sec0,data=hunter2",
        "-no-such-option",
    ]));
    let err = bad.launch().await.unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("secret,id=sec0,data=<redacted>"), "{err}");

    // The QMP transcript records the command without its secret.
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .qmp_transcript(true)
            .keep_run_dir(KeepRunDir::Always),
    );
    vm.launch().await.unwrap();
    vm.cmd(
        "object-add",
        json!({"qom-type": "secret", "id": "s1", "data": "topsecret"}),
    )
    .await
    .unwrap();
    let run_dir = vm.run_dir().unwrap().to_path_buf();
    vm.shutdown().await.unwrap();
    let transcript = std::fs::read_to_string(run_dir.join("qmp.log")).unwrap();
    assert!(transcript.contains("object-add"), "{transcript}");
    assert!(!transcript.contains("topsecret"), "{transcript}");
    assert!(transcript.contains("<redacted>"), "{transcript}");
    std::fs::remove_dir_all(run_dir).unwrap();
}
