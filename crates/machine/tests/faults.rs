//! Fault injection against real QEMU: each fault ends in a clear error, and nothing is left
//! behind (the scratch dir checks run dirs; `assert_gone` checks processes).

use qemu_test_support::machine as common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_gone, Scratch, T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemu_machine::{guest, ErrorKind, LaunchReason, Machine};
use qmp::Request;

fn signal_later(pid: u32, signal: Signal, after: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let _ = kill(Pid::from_raw(pid as i32), signal);
    })
}

#[tokio::test]
async fn sigkill_in_the_middle_of_an_event_wait() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    let killer = signal_later(pid, Signal::SIGKILL, Duration::from_millis(300));
    let start = Instant::now();
    let err = vm.event_wait("NEVER", None, T).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let ErrorKind::Exited(exit) = err.kind() else {
        panic!("{err}")
    };
    assert!(exit.during.contains("NEVER"), "{err}");
    assert!(err.to_string().contains("signal: 9"), "{err}");
    killer.join().unwrap();
    assert!(vm.shutdown().await.is_err());
    assert_gone(pid, T);
}

#[tokio::test]
async fn sigkill_in_the_middle_of_a_console_expect() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().builtin_guest());
    vm.launch().await.unwrap();
    let console = vm.console().unwrap();
    console.expect(guest::BANNER, T).await.unwrap();
    let pid = vm.pid().unwrap();
    let killer = signal_later(pid, Signal::SIGKILL, Duration::from_millis(300));
    let err = console.expect("never printed", T).await.unwrap_err();
    let ErrorKind::Console {
        problem,
        last_output,
        ..
    } = err.kind()
    else {
        panic!("{err}")
    };
    assert!(problem.contains("closed"), "{err}");
    // Nothing came after the banner the cursor had passed.
    assert_eq!(last_output, "", "{err}");
    killer.join().unwrap();
    assert!(vm.shutdown().await.is_err());
    assert_gone(pid, T);
}

#[tokio::test]
async fn sigstop_during_launch_hits_the_deadline_and_nothing_survives() {
    let scratch = Scratch::new();
    // The wrapper stops itself before it would exec QEMU.
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .wrapper(["sh", "-c", "kill -STOP $$; exec \"$@\"", "sh"])
            .launch_timeout(Duration::from_millis(500)),
    );
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(failure.reason, LaunchReason::QmpTimeout(after) if after == Duration::from_millis(500)),
        "{err}"
    );
    assert_gone(failure.pid.unwrap(), T);
}

#[tokio::test]
async fn sigstop_during_a_command_is_a_deadline_then_an_abnormal_shutdown() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().machine_type("none"));
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let err = vm
        .request(Request::new("query-status").timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("timed out after 300ms waiting for the reply to `query-status`"),
        "{err}"
    );
    let err = vm
        .shutdown_timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::AbnormalShutdown(_)),
        "{err}"
    );
    assert_gone(pid, T);
}

/// A tmpfs of `size` mounted (with `options`) on a fresh dir; unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(options: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "these tests mount a tmpfs, which needs root"
        );
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_run_dir_on_a_read_only_filesystem() {
    let mount = Mount::tmpfs("ro,size=64k");
    let mut vm = Machine::new(
        Machine::builder(common::qemu())
            .base_temp_dir(mount.dir.path())
            .builtin_guest(),
    );
    let err = vm.launch().await.unwrap_err();
    assert!(err.to_string().contains("Read-only file system"), "{err}");
}

#[tokio::test]
async fn a_run_dir_on_a_full_filesystem() {
    let mount = Mount::tmpfs("size=16k");
    // Fill it up.
    let filler = mount.dir.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let mut vm = Machine::new(
        Machine::builder(common::qemu())
            .base_temp_dir(mount.dir.path())
            .builtin_guest(),
    );
    let err = vm.launch().await.unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    std::fs::remove_file(filler).unwrap();
    let left: Vec<_> = std::fs::read_dir(mount.dir.path()).unwrap().collect();
    assert!(left.is_empty(), "run dir left behind: {left:?}");
}

const NOFILE_HELPER: &str = "QEMU_MACHINE_NOFILE_HELPER";

/// Acts only when run as the helper: with almost no descriptors to spare, launch must fail
/// with an error, not a panic.
#[test]
fn nofile_helper() {
    if std::env::var(NOFILE_HELPER).is_err() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        open + 1,
        open + 1,
    )
    .unwrap();
    let mut vm = Machine::new(Machine::builder(common::qemu()).builtin_guest());
    match runtime.block_on(vm.launch()) {
        Ok(()) => println!("LAUNCHED"),
        Err(e) => println!("ERROR: {e}"),
    }
}

#[test]
fn a_low_nofile_limit_at_launch_is_an_error_not_a_panic() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nofile_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NOFILE_HELPER, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ERROR: ") && stdout.contains("Too many open files"),
        "{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn qemu_exiting_before_the_greeting() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().args(["-machine", "no-such-machine"]));
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1));
    assert!(failure.output.contains("unsupported machine type"), "{err}");
}
