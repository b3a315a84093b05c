//! `run --save-state` / `run --restore` and `run --exec --warm` with the Linux test guest
//! (real QEMU), and `cache list` / `cache clean`. Every state file and the cache live in
//! temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use qemu_test_support::cli::{output_with_input, Piped};

const BOOT: Duration = Duration::from_secs(180);

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qemu-machine"));
    command.env_remove("QMP_SOCKET");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn guest_dir() -> PathBuf {
    qemu_test_support::guests::built_linux_guest_dir()
}

/// `run` with the Linux test guest, then `extra`.
fn guest_run(extra: &[&str]) -> Command {
    let dir = guest_dir();
    let mut command = bin();
    command
        .args(["run", "-m", "256M", "--kernel"])
        .arg(dir.join("vmlinuz"))
        .arg("--initrd")
        .arg(dir.join("initrd.gz"))
        .args(["--append", "console=ttyS0 quiet panic=-1"])
        .args(extra);
    command
}

fn wait_for(piped: &Piped, pattern: &str, times: usize) {
    let deadline = Instant::now() + BOOT;
    while piped.output().matches(pattern).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {pattern:?} in {}",
            piped.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(command: &mut Command) -> Output {
    output_with_input(command, b"")
}

#[test]
fn save_state_on_detach_then_restore_and_exec() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("guest.state");
    let mut saving = Piped::spawn(&mut guest_run(&["--save-state", state.to_str().unwrap()]));
    wait_for(&saving, "guest# ", 1);
    saving.send(b"echo from-the-saved-guest > /tmp/marker\n");
    wait_for(&saving, "guest# ", 2);
    // The end of stdin detaches: the state is saved instead of a power-off.
    saving.close_stdin();
    let status = saving
        .wait_timeout(BOOT)
        .expect("run --save-state did not exit");
    let said = saving.output();
    assert!(status.success(), "{said}");
    assert!(said.contains("state saved to"), "{said}");
    assert!(!said.contains("system_powerdown"), "{said}");
    assert!(state.is_file());

    let restored = output(&mut guest_run(&[
        "--restore",
        state.to_str().unwrap(),
        "--exec",
        "cat /tmp/marker",
    ]));
    let (stdout, stderr) = (text(&restored.stdout), text(&restored.stderr));
    assert!(restored.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("from-the-saved-guest"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("restored from"), "{stderr}");

    let garbage = dir.path().join("garbage.state");
    std::fs::write(&garbage, b"garbage").unwrap();
    let refused = output(&mut guest_run(&[
        "--restore",
        garbage.to_str().unwrap(),
        "--exec",
        "true",
    ]));
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("not a usable saved state"), "{stderr}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["garbage.state", "guest.state"]);
}

fn warm_exec(cache: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let out = output(
        guest_run(&["--exec", "echo warm-$((6*7))", "--warm"])
            .env("QEMU_MACHINE_SNAPSHOT_CACHE", cache),
    );
    (out, started.elapsed())
}

#[test]
fn exec_warm_builds_the_cache_once_then_hits_it() {
    let cache = tempfile::tempdir().unwrap();
    let (first, cold) = warm_exec(cache.path());
    let stderr = text(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        text(&first.stdout).contains("warm-42"),
        "{}",
        text(&first.stdout)
    );
    assert!(stderr.contains("snapshot cache miss"), "{stderr}");

    let (second, warm) = warm_exec(cache.path());
    let stderr = text(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(
        text(&second.stdout).contains("warm-42"),
        "{}",
        text(&second.stdout)
    );
    assert!(stderr.contains("snapshot cache hit"), "{stderr}");
    eprintln!("--exec --warm: first run {cold:?}, second {warm:?}");

    let dir = cache.path().to_str().unwrap();
    let list = output(bin().args(["cache", "list", "--dir", dir, "--json"]));
    assert!(list.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1, "{listed}");
    let clean = output(bin().args(["cache", "clean", "--dir", dir]));
    assert!(clean.status.success());
    assert!(
        text(&clean.stdout).contains("removed 1 entries"),
        "{}",
        text(&clean.stdout)
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}
