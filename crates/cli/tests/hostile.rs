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

    /// `qemu-machine run --timeout 5 --shutdown-timeout 5 --qmp <qmp> ARGS` with its run dir
    /// under `base`.
    fn run(&self, args: &[&str]) -> Command {
        let mut command = bin();
        let seconds = SHUTDOWN_TIMEOUT.to_string();
        command
            .env("XDG_RUNTIME_DIR", self.base())
            .args(["run", "--timeout", &seconds, "--shutdown-timeout", &seconds])
            .arg("--qmp")
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
    // The graceful path: the guest was asked to power off, and did (all it printed is in
    // once the last line is).
    let output = if status.is_some() {
        vm.expect("QEMU exited", 1)
    } else {
        vm.output()
    };
    assert!(output.contains("system_powerdown"), "{output}");
    assert!(output.contains("\"reason\":\"guest-shutdown\""), "{output}");
    assert_cleaned_up(&scratch, status, signal, qemu, &output);
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
    // Typed from a thread: if the escape key were stuck behind the flood, the typing would
    // block and the test fail on its deadline instead of hanging.
    let mut keyboard = vm.keyboard();
    let (typed, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        let chunk = [b'a'; 4096];
        for _ in 0..256 {
            if keyboard.write_all(&chunk).is_err() {
                return;
            }
        }
        // Ctrl-] k: a paused guest cannot answer the power button of Ctrl-] q.
        if keyboard.write_all(b"\x1dk").is_ok() {
            let _ = typed.send(Instant::now());
        }
    });
    let start = done
        .recv_timeout(Duration::from_secs(10))
        .expect("1 MiB of typing did not go through within 10 s");
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

/// How a test QMP peer behaves once it accepted a connection.
#[derive(Clone, Copy)]
enum Peer {
    /// Never sends a byte.
    Silent,
    /// Greets, answers `qmp_capabilities`, then never answers again.
    GreetsThenMute,
    /// Closes the connection at once.
    Closes,
}

/// A UNIX socket in `dir` served by `peer` on a thread, to any number of connections (held
/// open until the test ends).
fn peer(dir: &Path, name: &str, peer: Peer) -> PathBuf {
    use std::io::{BufRead, BufReader, Write};
    let path = dir.join(name);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            match peer {
                Peer::Silent => held.push(stream),
                Peer::Closes => drop(stream),
                Peer::GreetsThenMute => {
                    let greeting = r#"{"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}, "capabilities": []}}"#;
                    let _ = write!(stream, "{greeting}\r\n");
                    let mut line = String::new();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    if reader.read_line(&mut line).is_ok() {
                        let request: serde_json::Value =
                            serde_json::from_str(&line).unwrap_or_default();
                        let reply = serde_json::json!({"return": {}, "id": request["id"]});
                        let _ = write!(stream, "{reply}\r\n");
                    }
                    held.push(stream);
                }
            }
        }
    });
    path
}

/// Runs `qemu-machine ARGS` with stdin from `input`; returns its status, stderr and how
/// long it took.
fn timed(args: &[&str], input: &str) -> (ExitStatus, String, Duration) {
    let start = Instant::now();
    let output = qemu_test_support::cli::output_with_input(bin().args(args), input.as_bytes());
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn exec_times_out_against_a_silent_peer() {
    let dir = tempfile::tempdir().unwrap();
    let silent = peer(dir.path(), "silent.sock", Peer::Silent);
    let mute = peer(dir.path(), "mute.sock", Peer::GreetsThenMute);
    let (silent, mute) = (silent.to_str().unwrap(), mute.to_str().unwrap());
    let bound = Duration::from_secs(2); // --timeout 1, plus 1 s
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["exec", "--timeout", "1", silent, "query-status"],
            "",
            "the QMP greeting",
        ),
        (
            &["exec", "--timeout", "1", mute, "query-status"],
            "",
            "the reply to `query-status`",
        ),
        (
            &["qom", "--timeout", "1", silent, "list"],
            "",
            "the QMP greeting",
        ),
        (
            &["qom", "--timeout", "1", mute, "tree"],
            "",
            "`qom-list`|walking the QOM tree under /",
        ),
        (
            &["shell", "--timeout", "1", silent],
            "query-status\n",
            "the QMP greeting",
        ),
        (
            &["shell", "--timeout", "1", mute],
            "query-status\n",
            "the reply to `query-status`",
        ),
    ];
    for (args, input, awaited) in cases {
        let (status, stderr, took) = timed(args, input);
        eprintln!("{args:?}: {status} after {took:?}");
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(took < bound, "{args:?} took {took:?}");
        // The per-command deadline and `qom tree`'s overall one are the same: either says.
        assert!(
            stderr.contains("timed out") && awaited.split('|').any(|a| stderr.contains(a)),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn huge_timeouts_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let closes = peer(dir.path(), "closes.sock", Peer::Closes);
    let closes = closes.to_str().unwrap();
    let qemu = fake_qemu(dir.path(), "qemu-fails", "exit 1");
    let qemu = qemu.to_str().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for huge in ["1e19", "1e300", "inf"] {
        let cases: [&[&str]; 5] = [
            &["events", "--timeout", huge, closes],
            &["exec", "--timeout", huge, closes, "query-status"],
            &["qom", "--timeout", huge, closes, "tree"],
            &["shell", "--timeout", huge, closes],
            &["run", "--timeout", huge, "--binary", qemu],
        ];
        for args in cases {
            let start = Instant::now();
            let output = qemu_test_support::cli::output_with_input(
                bin().env("XDG_RUNTIME_DIR", &base).args(args),
                b"query-status\n",
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!("{args:?}: {} after {:?}", output.status, start.elapsed());
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert!(!stderr.contains("internal error"), "{args:?}: {stderr}");
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        }
        // `ga` keeps retrying an agent that hangs up until its deadline (here: for ever):
        // it must be waiting, not dead of an overflow.
        let mut ga = Piped::spawn(bin().args(["ga", "--timeout", huge, closes, "ping"]));
        assert!(
            ga.wait_timeout(Duration::from_secs(1)).is_none(),
            "{}",
            ga.output()
        );
        assert!(!ga.output().contains("panicked"), "{}", ga.output());
    }
    for bad in ["-1", "NaN", "-inf"] {
        let output = qemu_test_support::cli::output_with_input(
            bin().args(["exec", &format!("--timeout={bad}"), closes, "query-status"]),
            b"",
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("must be a positive number of seconds"),
            "{stderr}"
        );
    }
    assert_eq!(dir_entries(&base), Vec::<String>::new());
}

#[test]
fn keep_run_dir_prints_where() {
    let scratch = Scratch::new();
    let mut vm = Piped::spawn(&mut scratch.run(&["--keep-run-dir"]));
    vm.expect("READY");
    vm.close_stdin();
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    let output = vm.output();
    assert!(status.is_some_and(|s| s.success()), "{output}");
    let kept = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("qemu-machine: run dir kept at "))
        .unwrap_or_else(|| panic!("no kept path in {output}"));
    let kept = PathBuf::from(kept);
    assert!(kept.is_dir(), "{output}");
    assert_eq!(kept.parent(), Some(scratch.base().as_path()));
    assert!(dir_entries(&kept).iter().any(|name| name.ends_with(".log")));
    std::fs::remove_dir_all(&kept).unwrap();
}

#[test]
fn commas_in_image_paths() {
    // Unescaped, QEMU would read `x/disk.img` as another -drive option and refuse it.
    let scratch = Scratch::new();
    let dir = scratch.path().join("dir,x");
    std::fs::create_dir(&dir).unwrap();
    let image = dir.join("disk.img");
    qemu_machine::guest::write_image(&image).unwrap();
    let mut vm = Piped::spawn(&mut scratch.run(&["--image", image.to_str().unwrap()]));
    let output = vm.expect("READY");
    let qemu = pid_in(&output);
    vm.close_stdin();
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    assert!(status.is_some_and(|s| s.success()), "{}", vm.output());
    assert_gone(qemu);
    assert_eq!(dir_entries(&scratch.base()), Vec::<String>::new());
}

#[test]
fn qemu_output_escapes_are_neutralised() {
    // A "QEMU" that tries to retitle the terminal, clear it, and start a C1 CSI.
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(
        dir.path(),
        "qemu-hostile",
        r"printf '\033]0;pwned\007\033[2J\302\23331mred\n' >&2; exit 1",
    );
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let output = qemu_test_support::cli::output_with_input(
        bin()
            .env("XDG_RUNTIME_DIR", &base)
            .args(["run", "--binary"])
            .arg(&qemu),
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        !output.stderr.iter().any(|b| matches!(b, 0x07 | 0x1b)),
        "{:?}",
        output.stderr
    );
    assert!(!stderr.contains('\u{9b}'), "{stderr}");
    // Shown, not obeyed.
    assert!(
        stderr.contains(r"\x1b]0;pwned\x07\x1b[2J\u{9b}31mred"),
        "{stderr}"
    );
    assert_eq!(dir_entries(&base), Vec::<String>::new());
}

#[test]
fn shell_log_is_private_and_redacted() {
    use std::os::unix::fs::PermissionsExt;
    let qemu = qemu_test_support::cli::Qemu::start(&["-machine", "none"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("shell.log");
    // umask is per process: 000 in the child, which would make a plain create 0666.
    let shell = |log: &Path| {
        let mut command = Command::new("sh");
        command
            .args(["-c", "umask 000; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_qemu-machine"))
            .args(["shell", "--verbose", "--log"])
            .arg(log)
            .arg(qemu.address())
            .env_remove("QMP_SOCKET");
        command
    };
    let input = "object-add qom-type=secret id=s0 data=hunter2\nquery-status\n";
    let output = qemu_test_support::cli::output_with_input(&mut shell(&log), input.as_bytes());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 2, "{logged}");
    assert!(!logged.contains("hunter2"), "{logged}");
    assert!(logged.contains(r#""data":"<redacted>""#), "{logged}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(stderr.contains("<redacted>"), "{stderr}");

    // A symlink at the log path is not followed: the file it points at stays as it was.
    let target = dir.path().join("target");
    std::fs::write(&target, "untouched").unwrap();
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let output = qemu_test_support::cli::output_with_input(&mut shell(&link), input.as_bytes());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is a symbolic link, not a regular file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
}

#[test]
fn run_cleans_up_on_sigquit() {
    let scratch = Scratch::new();
    let mut vm = Piped::spawn(&mut scratch.run(&[]));
    let qemu = pid_in(&vm.expect("READY"));
    send(vm.id(), Signal::SIGQUIT);
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    assert_cleaned_up(&scratch, status, Signal::SIGQUIT, qemu, &vm.output());
}

#[test]
fn a_second_signal_kills_a_vm_that_does_not_quit() {
    // QEMU stopped: `quit` is not answered, so the graceful shutdown would take the whole
    // --timeout; the second SIGTERM cuts it short.
    let scratch = Scratch::new();
    let mut vm = Piped::spawn(&mut scratch.run(&[]));
    let qemu = pid_in(&vm.expect("READY"));
    send(qemu, Signal::SIGSTOP);
    send(vm.id(), Signal::SIGTERM);
    vm.expect("SIGTERM: shutting the VM down");
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    send(vm.id(), Signal::SIGTERM);
    let status = vm.wait_timeout(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    eprintln!("second signal: exited after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(2), "{}", vm.output());
    assert!(
        vm.output().contains("SIGTERM: killing QEMU"),
        "{}",
        vm.output()
    );
    assert_cleaned_up(&scratch, status, Signal::SIGTERM, qemu, &vm.output());
}
