//! Issue 13, "Hold under hostile input and faults", for the `qemu-machine` command: signals
//! and a closed stdout during `run`, stale and foreign `--qmp` socket paths, a guest that
//! stops reading its console, silent peers and absurd timeouts, hostile bytes in QEMU's
//! output, and a private, redacted shell log. Each test drives the real binary (and real
//! QEMU where it matters) and checks that nothing is left behind.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::termios::LocalFlags;
use nix::unistd::Pid;
use qemu_test_support::cli::{assert_gone, dir_entries, pid_in, wait_with_output, OnPty, Piped};
use qemu_test_support::KillOnDrop;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qemu-machine"));
    command.env_remove("QMP_SOCKET");
    command
}

/// The `--timeout` the `run` tests give: the bound on the shutdown after a signal.
const SHUTDOWN_TIMEOUT: u64 = 5;

/// A scratch directory for one test: `base` (what `$XDG_RUNTIME_DIR` points at, so the run
/// dir lands there) and `sockets` (for `--qmp`).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let scratch = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(scratch.base()).unwrap();
        std::fs::create_dir(scratch.dir.path().join("sockets")).unwrap();
        scratch
    }

    fn base(&self) -> PathBuf {
        self.dir.path().join("base")
    }

    fn qmp(&self) -> PathBuf {
        self.dir.path().join("sockets/qmp.sock")
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `qemu-machine run --timeout 5 --qmp <qmp> ARGS` with its run dir under `base`.
    fn run(&self, args: &[&str]) -> Command {
        let mut command = bin();
        command
            .env("XDG_RUNTIME_DIR", self.base())
            .args(["run", "--timeout", &SHUTDOWN_TIMEOUT.to_string(), "--qmp"])
            .arg(self.qmp())
            .args(args);
        command
    }
}

fn send(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

/// What every signal test checks after the exit: the status, QEMU gone, the run dir and
/// the socket file gone, and that the same `--qmp` path works again at once.
fn assert_cleaned_up(
    scratch: &Scratch,
    status: Option<ExitStatus>,
    signal: Signal,
    qemu: u32,
    output: &str,
) {
    let status = status.unwrap_or_else(|| panic!("still running: {output}"));
    assert_eq!(status.code(), Some(128 + signal as i32), "{output}");
    assert_gone(qemu);
    assert_eq!(
        dir_entries(&scratch.base()),
        Vec::<String>::new(),
        "{output}"
    );
    assert!(!scratch.qmp().exists(), "socket file left: {output}");

    let mut again = Piped::spawn(&mut scratch.run(&[]));
    again.expect("READY");
    assert!(std::fs::symlink_metadata(scratch.qmp())
        .unwrap()
        .file_type()
        .is_socket());
    again.close_stdin();
    let status = again.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        again.output()
    );
    assert!(!scratch.qmp().exists());
    assert_eq!(dir_entries(&scratch.base()), Vec::<String>::new());
}

/// `run` on a terminal, then `signal`: see [`assert_cleaned_up`]; the terminal is back in
/// cooked mode (ICANON and ECHO) afterwards.
fn signal_on_a_pty(signal: Signal) {
    let scratch = Scratch::new();
    let mut vm = OnPty::spawn(&mut scratch.run(&[]));
    let output = vm.expect("READY", 1);
    let qemu = pid_in(&output);
    assert!(!vm.termios().local_flags.contains(LocalFlags::ICANON));
    let start = Instant::now();
    send(vm.id(), signal);
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    eprintln!("{signal}: exited after {:?}", start.elapsed());
    let flags = vm.termios().local_flags;
    assert!(
        flags.contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "terminal left raw: {flags:?}"
    );
    assert_cleaned_up(&scratch, status, signal, qemu, &vm.output());
}

#[test]
fn run_cleans_up_on_sigterm() {
    signal_on_a_pty(Signal::SIGTERM);
}

#[test]
fn run_cleans_up_on_sighup() {
    signal_on_a_pty(Signal::SIGHUP);
}

#[test]
fn run_cleans_up_on_sigint_without_a_tty() {
    let scratch = Scratch::new();
    let mut vm = Piped::spawn(&mut scratch.run(&[]));
    let output = vm.expect("READY");
    let qemu = pid_in(&output);
    let start = Instant::now();
    send(vm.id(), Signal::SIGINT);
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    eprintln!("SIGINT: exited after {:?}", start.elapsed());
    assert_cleaned_up(&scratch, status, Signal::SIGINT, qemu, &vm.output());
}

#[test]
fn run_cleans_up_when_its_output_is_gone() {
    // stdout a pipe whose reader is gone: the first console write fails with EPIPE (not a
    // SIGPIPE death), and the VM is shut down as on a detach (QEMU's own status, 0).
    let scratch = Scratch::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut vm = KillOnDrop(
        scratch
            .run(&[])
            .stdin(Stdio::piped())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let output = wait_with_output(&mut vm);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("output gone: exited after {:?}", start.elapsed());
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(start.elapsed() < Duration::from_secs(SHUTDOWN_TIMEOUT + 10));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_gone(pid_in(&stderr));
    assert_eq!(dir_entries(&scratch.base()), Vec::<String>::new());
    assert!(!scratch.qmp().exists());
}

#[test]
fn stale_qmp_socket_is_replaced() {
    let scratch = Scratch::new();
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(scratch.qmp()).unwrap());
    assert!(scratch.qmp().exists());
    let mut vm = Piped::spawn(&mut scratch.run(&[]));
    let output = vm.expect("READY");
    assert!(output.contains("removed the stale socket"), "{output}");
    let client = std::os::unix::net::UnixStream::connect(scratch.qmp());
    assert!(client.is_ok(), "{client:?}");
    vm.close_stdin();
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    assert!(status.is_some_and(|s| s.success()), "{}", vm.output());
    assert!(!scratch.qmp().exists());
}

#[test]
fn live_qmp_socket_is_refused() {
    let scratch = Scratch::new();
    let _listener = std::os::unix::net::UnixListener::bind(scratch.qmp()).unwrap();
    let mut vm = Piped::spawn(&mut scratch.run(&[]));
    let status = vm.wait_timeout(Duration::from_secs(10));
    let output = vm.output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{output}");
    assert!(
        output.contains("is in use by a listening process"),
        "{output}"
    );
    assert!(!output.contains("(pid "), "QEMU was started: {output}");
    // Nothing launched: no run dir was even made.
    assert_eq!(dir_entries(&scratch.base()), Vec::<String>::new());
    assert!(scratch.qmp().exists(), "the live socket was removed");

    // Neither a regular file nor a symlink (even to a stale socket) is replaced.
    let other = scratch.path().join("sockets/file");
    std::fs::write(&other, "keep me").unwrap();
    let stale = scratch.path().join("sockets/stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let link = scratch.path().join("sockets/link");
    std::os::unix::fs::symlink(&stale, &link).unwrap();
    for path in [&other, &link] {
        let mut vm = Piped::spawn(
            bin()
                .env("XDG_RUNTIME_DIR", scratch.base())
                .args(["run", "--qmp"])
                .arg(path),
        );
        let status = vm.wait_timeout(Duration::from_secs(10));
        let output = vm.output();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{output}");
        assert!(
            output.contains("exists and is not a socket; not replacing it"),
            "{output}"
        );
    }
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
    assert!(stale.exists());
}

/// A stand-in for QEMU: a shell script at `dir/name` with `body`.
fn fake_qemu(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_signal_during_launch_aborts_it() {
    // A "QEMU" that never brings QMP up: the launch would wait its whole timeout (60 s).
    let scratch = Scratch::new();
    let qemu = fake_qemu(
        scratch.path(),
        "qemu-hangs",
        "echo $$ > \"$0.pid\"; exec sleep 60",
    );
    let mut vm = Piped::spawn(
        bin()
            .env("XDG_RUNTIME_DIR", scratch.base())
            .args(["run", "--timeout", "60", "--binary"])
            .arg(&qemu),
    );
    let pid_file = qemu.with_extension("pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let fake = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "{}", vm.output());
        std::thread::sleep(Duration::from_millis(10));
    };
    let start = Instant::now();
    send(vm.id(), Signal::SIGTERM);
    let status = vm.wait_timeout(Duration::from_secs(5));
    eprintln!("launch aborted after {:?}", start.elapsed());
    let output = vm.output();
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{output}");
    assert!(output.contains("SIGTERM: launch aborted"), "{output}");
    assert_gone(fake);
    assert_eq!(
        dir_entries(&scratch.base()),
        Vec::<String>::new(),
        "{output}"
    );
}

#[test]
fn the_escape_key_works_when_the_guest_stops_reading() {
    // -S: the guest never runs, so its UART is never read and the console socket fills up.
    let scratch = Scratch::new();
    let mut vm = OnPty::spawn(&mut scratch.run(&["--", "-S"]));
    let output = vm.expect("(pid ", 1);
    let qemu = pid_in(&output);
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm.termios().local_flags.contains(LocalFlags::ICANON) {
        assert!(Instant::now() < deadline, "never went raw");
        std::thread::sleep(Duration::from_millis(10));
    }
    let chunk = [b'a'; 4096];
    for _ in 0..256 {
        vm.send(&chunk);
    }
    let start = Instant::now();
    vm.send(b"\x1dq");
    let status = vm.wait_timeout(Duration::from_secs(5));
    eprintln!("detached after {:?}", start.elapsed());
    let output = vm.output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {output}");
    assert!(
        output.contains("guest is not reading its console;")
            && output.contains("bytes of input dropped"),
        "{output}"
    );
    assert_gone(qemu);
    assert_eq!(dir_entries(&scratch.base()), Vec::<String>::new());
}
