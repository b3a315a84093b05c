//! Hostile input and faults (issue 13): huge durations, floods, odd files, hostile output,
//! secrets echoed back. Each test asserts the exact outcome and that nothing is left behind.

use qemu_test_support::machine as common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_gone, Scratch, T};
use qemu_machine::{guest, ErrorKind, LaunchReason, Machine};
use serde_json::json;

/// This process's resident set size, in KiB (from `/proc/self/status`).
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Pids of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == marker.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// This process's open descriptors that lead into `dir` (files, FIFOs, dirs under it):
/// a concurrent test's descriptors are elsewhere, so this is exact under parallel tests.
fn fds_into(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

fn huge() -> [Duration; 2] {
    [Duration::MAX, Duration::from_secs_f64(1e19)]
}

// 1. Deadlines saturate.

#[tokio::test]
async fn no_duration_reaches_a_panic() {
    let scratch = Scratch::new();
    for d in huge() {
        // Event waits, console expect and wait() on the built-in guest.
        let mut vm = Machine::new(scratch.builder().builtin_guest());
        vm.launch().await.unwrap();
        let pid = vm.pid().unwrap();
        vm.console()
            .unwrap()
            .expect(guest::BANNER, d)
            .await
            .unwrap();
        vm.cmd("stop", json!({})).await.unwrap();
        vm.event_wait("STOP", None, d).await.unwrap();
        vm.cmd("cont", json!({})).await.unwrap();
        vm.events_wait(&[("RESUME", None), ("NEVER", Some(json!({})))], d)
            .await
            .unwrap();
        vm.cmd("system_powerdown", json!({})).await.unwrap();
        vm.event_wait("SHUTDOWN", None, d).await.unwrap();
        vm.wait(d).await.unwrap();
        assert!(vm.exit_status().unwrap().success());
        assert_gone(pid, T);

        // The launch deadline, a qtest command, and the shutdown ladder.
        let mut vm = Machine::new(
            scratch
                .builder()
                .machine_type("none")
                .launch_timeout(d)
                .qtest(),
        );
        vm.launch().await.unwrap();
        let pid = vm.pid().unwrap();
        let reply = vm
            .qtest()
            .unwrap()
            .cmd_timeout("endianness", d)
            .await
            .unwrap();
        assert!(reply.starts_with("OK"), "{reply}");
        vm.shutdown_timeout(d).await.unwrap();
        assert_gone(pid, T);

        // A guest agent connection (to a QMP monitor: it ends at once, no retrying).
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let mut vm = Machine::new(scratch.builder().machine_type("none").args([
            "-chardev",
            &format!(
                "socket,id=extra,path={},server=on,wait=off",
                socket.display()
            ),
            "-mon",
            "chardev=extra,mode=control",
        ]));
        vm.launch().await.unwrap();
        let err = qemu_machine::GuestAgent::connect(&qmp::Address::Unix(socket), d)
            .await
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::GuestAgent { .. }), "{err}");
        vm.shutdown_timeout(d).await.unwrap();
    }
}

// 2. Bounded reads of outside data.

/// A fake QEMU that floods its output with about 20 MB of lines, ends with a known line
/// and exits 1.
fn flooding_qemu(dir: &Path) -> PathBuf {
    script(
        dir,
        "flooding-qemu",
        "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' \
         | head -c 20000000 >&2\necho 'the very last line' >&2\nexit 1",
    )
}

#[tokio::test]
async fn a_20mb_launch_failure_quotes_only_the_tail() {
    let scratch = Scratch::new();
    let bin = tempfile::tempdir().unwrap();
    let qemu = flooding_qemu(bin.path());
    let baseline = vm_rss_kib();
    let mut vm =
        Machine::new(Machine::builder(qemu.to_str().unwrap()).base_temp_dir(scratch.path()));
    let err = vm.launch().await.unwrap_err();
    let peak = vm_rss_kib();
    println!("VmRSS baseline {baseline} KiB, after the failed launch {peak} KiB");
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(failure.reason, LaunchReason::ExitedBeforeQmp),
        "{err}"
    );
    let shown = err.to_string();
    println!(
        "Display: {} bytes, {} lines",
        shown.len(),
        shown.lines().count()
    );
    assert!(shown.len() < 70 * 1024, "{} bytes", shown.len());
    assert!(
        shown.lines().count() <= 210,
        "{} lines",
        shown.lines().count()
    );
    assert!(
        shown.contains("earlier bytes of QEMU's output left out"),
        "{}",
        &shown[..500]
    );
    assert!(shown.contains("the whole log was not kept"));
    assert!(
        shown.trim_end().ends_with("the very last line"),
        "{}",
        &shown[shown.len() - 300..]
    );
    assert!(
        peak.saturating_sub(baseline) < 16 * 1024,
        "RSS grew by {} KiB",
        peak - baseline
    );
    let pid = failure.pid.unwrap();
    assert_gone(pid, T);
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
    assert_eq!(fds_into(bin.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn get_log_after_a_flood_is_bounded() {
    let scratch = Scratch::new();
    let bin = tempfile::tempdir().unwrap();
    let qemu = flooding_qemu(bin.path());
    let baseline = vm_rss_kib();
    let mut vm = Machine::new(
        Machine::builder(qemu.to_str().unwrap())
            .base_temp_dir(scratch.path())
            .keep_run_dir(qemu_machine::KeepRunDir::Always),
    );
    vm.launch().await.unwrap_err();
    let log = vm.get_log().unwrap();
    let peak = vm_rss_kib();
    println!(
        "VmRSS baseline {baseline} KiB, after get_log {peak} KiB; log {} bytes",
        log.len()
    );
    assert!(log.len() <= 1024 * 1024 + 256, "{} bytes", log.len());
    let header = log.lines().next().unwrap();
    let kept = vm.kept_run_dir().unwrap().to_path_buf();
    let full = kept.join(format!("{}.log", vm.name()));
    assert!(
        header.contains("earlier bytes of QEMU's output left out"),
        "{header}"
    );
    assert!(
        header.contains(&format!("the whole log is {}", full.display())),
        "{header}"
    );
    assert!(log.ends_with("the very last line\n"));
    assert!(std::fs::metadata(&full).unwrap().len() > 20_000_000);
    assert!(
        peak.saturating_sub(baseline) < 16 * 1024,
        "RSS grew by {} KiB",
        peak - baseline
    );
    std::fs::remove_dir_all(kept).unwrap();
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn probe_of_a_flooding_binary_is_an_error() {
    let bin = tempfile::tempdir().unwrap();
    let marker = format!("probe-flood-marker-{}", std::process::id());
    let qemu = script(bin.path(), "yes-qemu", &format!("exec yes {marker}"));
    let start = Instant::now();
    let err = qemu_machine::Probe::of(qemu.to_str().unwrap())
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("probe failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let ErrorKind::Probe { message, .. } = err.kind() else {
        panic!("{err}")
    };
    assert!(message.contains("printed more than 4 MiB"), "{message}");
    assert!(message.contains("a QEMU binary?"), "{message}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while !processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", processes_with(&marker));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn absurd_console_buffer_is_a_config_error() {
    let scratch = Scratch::new();
    let bin = tempfile::tempdir().unwrap();
    let ran = bin.path().join("ran");
    let qemu = script(bin.path(), "qemu", &format!("touch '{}'", ran.display()));
    for bytes in [usize::MAX, qemu_machine::MAX_CONSOLE_BUFFER + 1] {
        let mut vm = Machine::new(
            Machine::builder(qemu.to_str().unwrap())
                .base_temp_dir(scratch.path())
                .console(None, 0)
                .console_buffer(bytes),
        );
        let err = vm.launch().await.unwrap_err();
        let ErrorKind::Config(message) = err.kind() else {
            panic!("{err}")
        };
        assert!(message.contains("console_buffer"), "{message}");
        assert!(vm.pid().is_none());
    }
    assert!(!ran.exists(), "QEMU was spawned");
}

// 3. Files.

#[tokio::test]
async fn console_log_symlink_is_replaced_not_followed() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let console_log = dir.path().join("console.log");
    std::os::unix::fs::symlink(&victim, &console_log).unwrap();
    let qemu_log_dir = dir.path().join("logs");
    std::fs::create_dir(&qemu_log_dir).unwrap();
    let mut vm = Machine::new(
        scratch
            .builder()
            .builtin_guest()
            .console_log(&console_log)
            .log_dir(&qemu_log_dir),
    );
    std::os::unix::fs::symlink(&victim, qemu_log_dir.join(format!("{}.log", vm.name()))).unwrap();
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    vm.console()
        .unwrap()
        .expect(guest::BANNER, T)
        .await
        .unwrap();
    vm.shutdown().await.unwrap();
    assert_gone(pid, T);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o644
    );
    for path in [console_log, qemu_log_dir.join(format!("{}.log", vm.name()))] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "{}", path.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }
    assert!(std::fs::read_to_string(dir.path().join("console.log"))
        .unwrap()
        .contains("READY"));
    assert_eq!(fds_into(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn an_existing_0644_log_becomes_0600() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let console_log = dir.path().join("console.log");
    std::fs::write(&console_log, "old content\n").unwrap();
    std::fs::set_permissions(&console_log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut vm = Machine::new(
        scratch
            .builder()
            .builtin_guest()
            .console_log(&console_log)
            .log_dir(dir.path()),
    );
    let qemu_log = dir.path().join(format!("{}.log", vm.name()));
    std::fs::write(&qemu_log, "old log\n").unwrap();
    std::fs::set_permissions(&qemu_log, std::fs::Permissions::from_mode(0o644)).unwrap();
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    vm.console()
        .unwrap()
        .expect(guest::BANNER, T)
        .await
        .unwrap();
    vm.shutdown().await.unwrap();
    assert_gone(pid, T);
    for path in [&console_log, &qemu_log] {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
        assert!(!std::fs::read_to_string(path).unwrap().contains("old"));
    }
    // Nothing else left in the log dir (no temporary files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    assert_eq!(fds_into(dir.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_fifo_where_a_log_belongs_is_an_error_at_once() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let qemu = script(dir.path(), "qemu", &format!("touch '{}'", ran.display()));
    let fifo = dir.path().join("fifo.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let base = Machine::builder(qemu.to_str().unwrap()).base_temp_dir(scratch.path());
    // As the console log, and as QEMU's log.
    let cases = [
        base.clone().console(None, 0).console_log(&fifo),
        base.clone().name("fifo").log_dir(&logs),
    ];
    nix::unistd::mkfifo(&logs.join("fifo.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for builder in cases {
        let mut vm = Machine::new(builder);
        let start = Instant::now();
        let err = vm.launch().await.unwrap_err();
        let took = start.elapsed();
        println!("{took:?}: {err}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        let ErrorKind::Config(message) = err.kind() else {
            panic!("{err}")
        };
        assert!(message.contains("is a FIFO"), "{message}");
        assert!(vm.pid().is_none());
    }
    assert!(!ran.exists(), "QEMU was spawned");
    assert_eq!(fds_into(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn relative_monitor_path_cannot_escape() {
    let scratch = Scratch::new();
    for path in ["../qmp.sock", "a/../../qmp.sock", ""] {
        let mut vm = Machine::new(
            scratch
                .builder()
                .machine_type("none")
                .monitor(qemu_machine::Monitor::Unix(path.into())),
        );
        let err = vm.launch().await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Config(_)), "{path}: {err}");
        assert!(vm.pid().is_none());
    }
    assert!(!scratch.path().join("qmp.sock").exists());
    // A plain relative name still works, inside the run dir.
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .monitor(qemu_machine::Monitor::Unix("./sub-less.sock".into())),
    );
    vm.launch().await.unwrap();
    vm.shutdown().await.unwrap();
}

// 4. Messages.

#[tokio::test]
async fn launch_deadline_is_the_deadline() {
    let scratch = Scratch::new();
    let bin = tempfile::tempdir().unwrap();
    let qemu = script(bin.path(), "sleepy-qemu", "exec sleep 60");
    let mut vm = Machine::new(
        Machine::builder(qemu.to_str().unwrap())
            .base_temp_dir(scratch.path())
            .launch_timeout(Duration::from_secs(2)),
    );
    let start = Instant::now();
    let err = vm.launch().await.unwrap_err();
    let took = start.elapsed();
    println!("launch failed after {took:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2600),
        "{took:?}"
    );
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(failure.reason, LaunchReason::QmpTimeout(d) if d == Duration::from_secs(2)),
        "{err}"
    );
    assert_gone(failure.pid.unwrap(), Duration::from_millis(100));
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn commas_in_paths_work() {
    let base = tempfile::Builder::new()
        .prefix("with,comma,,s-")
        .tempdir()
        .unwrap();
    for monitor in [
        qemu_machine::Monitor::Unix("q,mp.sock".into()),
        qemu_machine::Monitor::Socketpair,
    ] {
        let mut vm = Machine::new(
            Machine::builder(common::qemu())
                .base_temp_dir(base.path())
                .args(["-nodefaults"])
                .name(format!(
                    "comma,vm-{}",
                    matches!(monitor, qemu_machine::Monitor::Socketpair)
                ))
                .monitor(monitor)
                .builtin_guest(),
        );
        vm.launch().await.unwrap();
        let pid = vm.pid().unwrap();
        let argv = vm.command_line().unwrap().join(" ");
        assert!(
            argv.contains("file=") && argv.contains("with,,comma,,,,s-"),
            "{argv}"
        );
        let console = vm.console().unwrap();
        console.expect(guest::BANNER, T).await.unwrap();
        console.write(&[guest::POWEROFF]).await.unwrap();
        vm.wait(T).await.unwrap();
        assert!(vm.exit_status().unwrap().success());
        assert_gone(pid, T);
    }
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_qmp_monitor_is_not_a_guest_agent() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let mut vm = Machine::new(scratch.builder().machine_type("none").args([
        "-chardev",
        &format!(
            "socket,id=extra,path={},server=on,wait=off",
            socket.display()
        ),
        "-mon",
        "chardev=extra,mode=control",
    ]));
    vm.launch().await.unwrap();
    let start = Instant::now();
    let err = qemu_machine::GuestAgent::connect(&qmp::Address::Unix(socket), T)
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let ErrorKind::GuestAgent { message } = err.kind() else {
        panic!("{err}")
    };
    assert!(
        message.contains("is a QMP monitor, not a guest agent"),
        "{message}"
    );
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn terminal_escapes_in_qemu_output_are_defused() {
    let scratch = Scratch::new();
    let bin = tempfile::tempdir().unwrap();
    let qemu = script(
        bin.path(),
        "evil-qemu",
        "printf '\\033]0;pwned\\007\\033[2J\\302\\233x\\n' >&2\nexit 1",
    );
    let mut vm =
        Machine::new(Machine::builder(qemu.to_str().unwrap()).base_temp_dir(scratch.path()));
    let err = vm.launch().await.unwrap_err();
    let shown = err.to_string();
    println!("{shown}");
    assert!(!shown.contains(['\u{7}', '\u{1b}', '\u{9b}']), "{shown:?}");
    assert!(
        shown.contains("\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}x"),
        "{shown}"
    );
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    // The raw field keeps the bytes; only the display is defused.
    assert!(failure.output.contains('\u{1b}'));
}

// 5. Secrets.

#[tokio::test]
async fn qemu_echo_of_a_secret_is_redacted() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .args(["-object", "secret,id=s0,data=hunter2,,tail5,bogus=1"]),
    );
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    assert!(
        matches!(failure.reason, LaunchReason::ExitedBeforeQmp),
        "{err}"
    );
    let shown = err.to_string();
    let debug = format!("{err:?}");
    let log = vm.get_log().unwrap();
    println!("{shown}\n{log}");
    assert!(
        failure.output.contains("Invalid parameter 'bogus'"),
        "{shown}"
    );
    for text in [&shown, &debug, &log.to_string()] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("tail5"), "{text}");
    }
    assert!(shown.contains("data=<redacted>"), "{shown}");
    assert_gone(failure.pid.unwrap(), T);

    // A short secret: QEMU's echo of the whole argument is replaced by its redacted form.
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .args(["-object", "secret,id=s1,data=zq,bogus=1"]),
    );
    let err = vm.launch().await.unwrap_err();
    let shown = err.to_string();
    let log = vm.get_log().unwrap();
    for text in [&shown, &format!("{err:?}"), &log.to_string()] {
        assert!(!text.contains("data=zq"), "{text}");
        assert!(text.contains("Invalid parameter 'bogus'"), "{text}");
    }
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
}

// 6. Containment.

#[tokio::test]
async fn a_wrapper_that_forks_and_exits_before_qmp_leaves_nothing() {
    let scratch = Scratch::new();
    let bin = tempfile::tempdir().unwrap();
    let wrapper = script(bin.path(), "forking-wrapper", "\"$@\" &\nexit 0");
    let marker = format!(
        "forked-qemu-marker-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut vm = Machine::new(
        scratch
            .builder()
            .machine_type("none")
            .wrapper([wrapper.to_str().unwrap()])
            .args(["-name", &marker]),
    );
    let start = Instant::now();
    let err = vm.launch().await.unwrap_err();
    let ErrorKind::Launch(failure) = err.kind() else {
        panic!("{err}")
    };
    println!("{} after {:?}", failure.reason, start.elapsed());
    let deadline = Instant::now() + Duration::from_secs(1);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU outlived its wrapper: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_gone(failure.pid.unwrap(), T);
    assert_eq!(fds_into(scratch.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn daemonize_is_refused() {
    let scratch = Scratch::new();
    for flag in ["-daemonize", "--daemonize"] {
        let mut vm = Machine::new(scratch.builder().machine_type("none").args([flag]));
        let err = vm.launch().await.unwrap_err();
        let ErrorKind::Config(message) = err.kind() else {
            panic!("{err}")
        };
        assert!(
            message.contains(flag) && message.contains("outlive"),
            "{message}"
        );
        assert!(vm.pid().is_none());
    }
}

// 2. (qtest) A hostile qtest peer: an endless line, an IRQ flood.

#[tokio::test]
async fn qtest_floods_are_bounded() {
    use std::io::Write;
    // IRQ flood: the queue keeps the newest 4096.
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let qt = qemu_machine::Qtest::start("flood", ours, false).unwrap();
    let writer = std::thread::spawn(move || {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("IRQ raise {i}\n"));
        }
        text.push_str("OK\n");
        theirs.write_all(text.as_bytes()).unwrap();
        theirs
    });
    assert_eq!(qt.cmd_timeout("endianness", T).await.unwrap(), "OK");
    let irqs = qt.irqs();
    assert_eq!(irqs.len(), 4096);
    assert_eq!(irqs[0].line, 5000 - 4096);
    assert_eq!(irqs[4095].line, 4999);
    drop(writer.join().unwrap());

    // An endless line: a protocol error once it passes 16 MiB, not unbounded memory.
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let qt = qemu_machine::Qtest::start("endless", ours, false).unwrap();
    let baseline = vm_rss_kib();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        // Until the reader gives up and the socket closes.
        for _ in 0..64 {
            if theirs.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let err = qt.cmd_timeout("endianness", T).await.unwrap_err();
    let peak = vm_rss_kib();
    println!("qtest endless line: VmRSS baseline {baseline} KiB, after {peak} KiB: {err}");
    let ErrorKind::Qtest { message, .. } = err.kind() else {
        panic!("{err}")
    };
    assert!(message.contains("longer than 16 MiB"), "{message}");
    drop(qt);
    writer.join().unwrap();
}

// 2. (guest agent) An endless guest file.

#[tokio::test]
async fn reading_an_endless_guest_file_is_an_error() {
    use qmp::fake::{FakePeer, Reply};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // 262143 zero bytes per read (a multiple of 3: no base64 padding), never EOF.
    let chunk = "A".repeat(262_143 / 3 * 4);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let peer = FakePeer::adopt(stream.into_std().unwrap()).unwrap();
        peer.serve(|request| match request["execute"].as_str() {
            Some("guest-sync-delimited") => Reply::Return(request["arguments"]["id"].clone()),
            Some("guest-file-open") => Reply::Return(json!(7)),
            Some("guest-file-read") => Reply::Return(json!({
                "count": 262_143, "buf-b64": chunk, "eof": false
            })),
            Some("guest-file-close") => Reply::Return(json!({})),
            _ => Reply::Error("CommandNotFound".into(), "no".into()),
        })
        .await
    });
    let agent = qemu_machine::GuestAgent::connect(&qmp::Address::Unix(path), T)
        .await
        .unwrap();
    let baseline = vm_rss_kib();
    let start = Instant::now();
    let err = agent.read_file("/dev/zero").await.unwrap_err();
    let peak = vm_rss_kib();
    println!(
        "endless guest file: {:?}, VmRSS baseline {baseline} KiB, after {peak} KiB: {err}",
        start.elapsed()
    );
    let ErrorKind::GuestAgent { message } = err.kind() else {
        panic!("{err}")
    };
    assert!(message.contains("larger than 64 MiB"), "{message}");
    assert!(
        message.contains(&format!("read {} bytes", 257 * 262_143)),
        "{message}"
    );
    drop(agent);
    server.abort();
}
