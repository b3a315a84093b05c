//! A log that stays on disk (`log_dir`, `keep_run_dir`) holds no secret of the command
//! line once the run is over, although QEMU echoed it there (issue 13, class 7).

use qemu_test_support::machine as common;

use common::Scratch;
use qemu_machine::{ErrorKind, KeepRunDir, Machine};

#[tokio::test]
async fn a_kept_log_has_qemus_echo_of_a_secret_scrubbed() {
    let scratch = Scratch::new();
    let logs = tempfile::tempdir().unwrap();
    // In a separate log dir, and in a run dir kept on failure.
    for (name, log_dir) in [("in-log-dir", Some(logs.path())), ("in-run-dir", None)] {
        let mut builder = scratch
            .builder()
            .name(name)
            .machine_type("none")
            .keep_run_dir(KeepRunDir::OnFailure)
            .args(["-object", "secret,id=s0,data=hunter2,,tail5,bogus=1"]);
        if let Some(dir) = log_dir {
            builder = builder.log_dir(dir);
        }
        let mut vm = Machine::new(builder);
        let err = vm.launch().await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Launch(_)), "{err}");
        let kept = vm.kept_run_dir().expect("kept on failure").to_path_buf();
        let path = log_dir.unwrap_or(&kept).join(format!("{name}.log"));
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(on_disk.contains("Invalid parameter 'bogus'"), "{on_disk}");
        assert!(on_disk.contains("<redacted>"), "{on_disk}");
        assert!(!on_disk.contains("hunter2"), "{on_disk}");
        assert!(!on_disk.contains("tail5"), "{on_disk}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Nothing else left beside it (no temporary copy).
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains(".scrubbed"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        std::fs::remove_dir_all(kept).unwrap();
    }
}
