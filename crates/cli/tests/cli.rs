//! The `qemu-machine` command driven as a user would: under a pseudo-terminal for `run`,
//! through pipes for the rest, against real QEMU.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use qemu_test_support::cli::{
    assert_gone, output_with_input, pid_in, wait_with_output, OnPty, Qemu,
};
use qemu_test_support::guests::linux_guest_dir;
use qemu_test_support::KillOnDrop;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qemu-machine"));
    command.env_remove("QMP_SOCKET");
    command
}

/// `qemu-machine ARGS` with `stdin` as its input, to the end.
fn run(args: &[&str], stdin: &str) -> Output {
    output_with_input(bin().args(args), stdin.as_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `qemu-machine events ARGS` in the background, once it says on stderr that it listens.
/// Finish it with `wait_with_output`.
fn listening_events(args: &[&str]) -> KillOnDrop {
    let mut events = KillOnDrop(
        bin()
            .arg("events")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = events.stderr.as_mut().unwrap();
    let mut first = [0u8; 64];
    let n = stderr.read(&mut first).unwrap();
    assert!(
        text(&first[..n]).contains("listening"),
        "{}",
        text(&first[..n])
    );
    events
}

#[test]
fn run_puts_the_builtin_guest_on_the_terminal_and_detaches() {
    let mut vm = OnPty::spawn(bin().arg("run"));
    let output = vm.expect("READY", 1);
    let pid = pid_in(&output);
    vm.send(b"hello");
    vm.expect("hello", 1);
    vm.send(b"\x1dq");
    let status = vm.wait();
    assert!(status.success(), "{status}: {}", vm.output());
    assert!(vm.output().contains("QEMU exited"));
    assert_gone(pid);
}

#[test]
fn run_exits_with_qemus_status_when_the_guest_ends_it() {
    let mut vm = OnPty::spawn(bin().arg("run"));
    vm.expect("READY", 1);
    // Ctrl-X: the built-in guest exits through isa-debug-exit with status 33.
    vm.send(&[qemu_machine::guest::DEBUG_EXIT]);
    assert_eq!(vm.wait().code(), Some(33), "{}", vm.output());
}

#[test]
fn run_serves_qmp_to_two_clients_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.qmp");
    let mut vm = OnPty::spawn(bin().args(["run", "--qmp", socket.to_str().unwrap()]));
    vm.expect("READY", 1);

    let mut events = listening_events(&[
        socket.to_str().unwrap(),
        "--name",
        "STOP",
        "--name",
        "RESUME",
        "--count",
        "2",
        "--timeout",
        "30",
    ]);

    let shell = run(
        &["shell", socket.to_str().unwrap()],
        "stop\ncont\nquery-status\n",
    );
    let replies = text(&shell.stdout);
    let lines: Vec<&str> = replies.lines().collect();
    assert_eq!(
        lines[..2],
        ["{\"return\":{}}", "{\"return\":{}}"],
        "{replies}"
    );
    assert!(lines[2].contains("\"running\":true"), "{replies}");

    let seen = wait_with_output(&mut events);
    assert!(seen.status.success());
    let seen = text(&seen.stdout);
    let names: Vec<&str> = seen
        .lines()
        .map(|l| {
            if l.contains("\"STOP\"") {
                "STOP"
            } else {
                "RESUME"
            }
        })
        .collect();
    assert_eq!(names, ["STOP", "RESUME"], "{seen}");
    // The run's own terminal showed them too.
    vm.expect("\"event\":\"RESUME\"", 1);
    let socket_mode = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(socket_mode.permissions().mode() & 0o777, 0o600);

    vm.send(b"\x1dq");
    assert!(vm.wait().success());
    assert!(!socket.exists(), "the QMP socket is removed");
}

#[test]
fn shell_over_a_pipe_with_a_transaction_a_dotted_key_and_an_error() {
    let qemu = Qemu::start(&[
        "-machine",
        "none",
        "-blockdev",
        "driver=null-co,node-name=null0",
    ]);
    let script = "\
transaction(
block-dirty-bitmap-add node=null0 name=b0
block-dirty-bitmap-add node=null0 name=b1
)
blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=4096
no-such-command
query-named-block-nodes
";
    let out = run(&["shell", qemu.address()], script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "{\"return\":{}}");
    assert_eq!(lines[1], "{\"return\":{}}");
    assert!(lines[2].contains("CommandNotFound"), "{stdout}");
    assert!(
        lines[3].contains("\"r0\"") && lines[3].contains("\"b1\""),
        "{stdout}"
    );
}

#[test]
fn hmp_mode_and_cpu_switching() {
    let qemu = Qemu::start(&["-machine", "pc", "-S", "-smp", "2"]);
    let out = run(
        &["shell", "-H", qemu.address()],
        "info status\ncpu 1\ncpu 7\n",
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("VM status: paused (prelaunch)"), "{stdout}");
    assert!(stdout.contains("CPU 7"), "{stdout}");
}

#[test]
fn exec_prints_json_and_fails_with_class_and_desc() {
    let qemu = Qemu::start(&["-machine", "none"]);
    let ok = run(&["exec", qemu.address(), "query-status"], "");
    assert!(ok.status.success());
    assert!(text(&ok.stdout).contains("\"status\":\"running\""));
    let bad = run(&["exec", qemu.address(), "no-such-command"], "");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = text(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CommandNotFound: The command no-such-command has not been found"),
        "{stderr}"
    );
    let usage = run(&["exec", qemu.address(), "qom-get", "path"], "");
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("key=value"));
}

#[test]
fn events_count_and_timeout() {
    let second = tempfile::tempdir().unwrap();
    let other = second.path().join("other.sock");
    let qemu = Qemu::start(&[
        "-machine",
        "pc",
        "-S",
        "-qmp",
        &format!("unix:{},server=on,wait=off", other.display()),
    ]);
    let mut events = listening_events(&[
        qemu.address(),
        "--name",
        "RESUME",
        "--count",
        "1",
        "--timeout",
        "30",
    ]);
    // Events go to every monitor: act through the other one.
    let cont = run(&["exec", other.to_str().unwrap(), "cont"], "");
    assert!(cont.status.success(), "{}", text(&cont.stderr));
    let out = wait_with_output(&mut events);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("\"event\":\"RESUME\""), "{stdout}");

    let timed_out = run(
        &["events", qemu.address(), "--count", "1", "--timeout", "0.3"],
        "",
    );
    assert_eq!(timed_out.status.code(), Some(1));
    assert!(text(&timed_out.stderr).contains("timed out with 0 of 1 events"));
}

#[test]
fn qom_tree_on_an_empty_machine() {
    let qemu = Qemu::start(&["-machine", "none"]);
    let out = run(&["qom", qemu.address(), "tree", "/machine"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("/machine\n"), "{stdout}");
    assert!(
        stdout.contains("  type: \"none-machine\" (string)"),
        "{stdout}"
    );
    let json = run(&["qom", qemu.address(), "--json", "list", "/machine"], "");
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().any(|p| p["name"] == "type"));
    let get = run(&["qom", qemu.address(), "get", "/machine.type"], "");
    assert_eq!(text(&get.stdout).trim(), "\"none-machine\"");
}

#[test]
fn ga_ping_on_the_linux_guest() {
    let guest = linux_guest_dir();
    assert!(
        guest.join("vmlinuz").exists(),
        "the Linux test guest is not built: run guests/build-linux-guest.sh (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("qga.sock");
    let _vm = Qemu::start(&[
        "-machine",
        "pc",
        "-m",
        "256M",
        "-no-reboot",
        "-kernel",
        guest.join("vmlinuz").to_str().unwrap(),
        "-initrd",
        guest.join("initrd.gz").to_str().unwrap(),
        "-append",
        "console=ttyS0 quiet panic=-1",
        "-device",
        "virtio-serial-pci,id=ser0",
        "-chardev",
        &format!("socket,id=qga0,path={},server=on,wait=off", agent.display()),
        "-device",
        "virtserialport,bus=ser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ]);
    let out = run(
        &["ga", agent.to_str().unwrap(), "--timeout", "120", "ping"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "pong");
    let exec = run(
        &[
            "ga",
            agent.to_str().unwrap(),
            "exec",
            "/bin/echo",
            "-n",
            "hi",
        ],
        "",
    );
    assert_eq!(text(&exec.stdout), "hi");
}

#[test]
fn accel_and_version() {
    let out = run(&["accel"], "");
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("accelerators:") && stdout.contains("tcg"),
        "{stdout}"
    );
    if qemu_machine::is_kvm_pvm() {
        assert!(stdout.contains("--accel auto: tcg"), "{stdout}");
    }
    let version = run(&["version"], "");
    assert!(text(&version.stdout).starts_with("qemu-machine "));
    let json = run(&["accel", "--json"], "");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(json["accelerators"]
        .as_array()
        .unwrap()
        .contains(&"tcg".into()));
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell], "");
        assert!(script.status.success());
        assert!(text(&script.stdout).contains("qemu-machine"), "{shell}");
    }
}

#[test]
fn bad_input_gets_one_line_and_a_non_zero_status() {
    for (args, needle) in [
        (
            vec!["exec", "/nonexistent/qmp.sock", "query-status"],
            "cannot connect",
        ),
        (
            vec!["exec", "host:notaport", "query-status"],
            "not a QMP address",
        ),
        (vec!["run", "--", "-no-such-option"], "invalid option"),
    ] {
        let out = run(&args, "");
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("qemu-machine: "), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    let unknown = run(&["frobnicate"], "");
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn the_interactive_shell_completes_command_names() {
    let qemu = Qemu::start(&["-machine", "none"]);
    let home = tempfile::tempdir().unwrap();
    let mut shell = OnPty::spawn(
        bin()
            .args(["shell", qemu.address()])
            .env("HOME", home.path()),
    );
    shell.expect("Welcome to the QMP low-level shell!", 1);
    shell.expect("(QEMU) ", 1);
    // Tab completes the unique prefix; Enter sends it.
    shell.send(b"query-statu\t\r");
    shell.expect("\"status\":\"running\"", 1);
    shell.send(b"\x04");
    assert!(shell.wait().success());
    let history = std::fs::read_to_string(home.path().join(".qmp-shell_history")).unwrap();
    assert!(history.contains("query-status"), "{history}");
}

#[test]
fn a_test_that_fails_half_way_leaves_no_process() {
    let pids = std::sync::Mutex::new(Vec::new());
    let failed = std::panic::catch_unwind(|| {
        let qemu = Qemu::start(&["-machine", "none"]);
        let shell = OnPty::spawn(bin().args(["shell", qemu.address()]));
        pids.lock().unwrap().extend([qemu.id(), shell.id()]);
        panic!("a test failing with QEMU and a shell running");
    });
    assert!(failed.is_err());
    let pids = pids.into_inner().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} was left behind"
        );
    }
}

/// What the guest printed, without the status and event lines `run` puts between (they
/// start on lines of their own, even in the middle of a guest's line).
fn guest_text(output: &str) -> String {
    output
        .split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.starts_with("{\"") && !line.starts_with("qemu-machine:"))
        .collect()
}

/// `qemu-machine run ARGS` on a terminal, once the built-in guest said READY.
fn booted(args: &[&str]) -> OnPty {
    let vm = OnPty::spawn(bin().arg("run").args(args));
    vm.expect("READY", 1);
    vm
}

#[test]
fn ctrl_bracket_q_powers_the_guest_off() {
    let mut vm = booted(&["--shutdown-timeout", "20"]);
    let pid = pid_in(&vm.output());
    vm.send(b"\x1dq");
    let status = vm.wait();
    let output = vm.output();
    assert!(status.success(), "{status}: {output}");
    assert!(output.contains("system_powerdown"), "{output}");
    // The guest answered the power button: it said goodbye and QEMU saw it shut down.
    // (An event line may land inside the guest's line, on lines of its own.)
    assert!(guest_text(&output).contains("BYE"), "{output}");
    assert!(
        output.contains("\"event\":\"SHUTDOWN\"")
            && output.contains("\"reason\":\"guest-shutdown\""),
        "{output}"
    );
    assert!(!output.contains("sending quit"), "{output}");
    assert_gone(pid);
}

#[test]
fn ctrl_bracket_k_quits_at_once() {
    let mut vm = booted(&[]);
    let pid = pid_in(&vm.output());
    vm.send(b"\x1dk");
    let status = vm.wait();
    let output = vm.output();
    assert!(status.success(), "{status}: {output}");
    assert!(output.contains("\"reason\":\"host-qmp-quit\""), "{output}");
    assert!(!output.contains("system_powerdown"), "{output}");
    assert!(!output.contains("BYE"), "{output}");
    assert_gone(pid);
}

#[test]
fn a_guest_that_ignores_the_power_button_is_quit_after_the_shutdown_timeout() {
    let mut vm = booted(&["--shutdown-timeout", "1"]);
    let pid = pid_in(&vm.output());
    // The built-in guest's HANG key: CPU stopped with interrupts off, deaf to the button.
    vm.send(&[qemu_machine::guest::HANG]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let start = std::time::Instant::now();
    vm.send(b"\x1dq");
    let status = vm.wait();
    let took = start.elapsed();
    let output = vm.output();
    assert!(status.success(), "{status}: {output}");
    assert!(
        output.contains("did not power off within 1 s; sending quit"),
        "{output}"
    );
    assert!(output.contains("\"reason\":\"host-qmp-quit\""), "{output}");
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_gone(pid);
}

#[test]
fn status_lines_never_overwrite_the_guests_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.qmp");
    let mut vm = booted(&["--qmp", socket.to_str().unwrap()]);
    // The built-in guest echoes: "prompt-like" stays on its line, with no newline.
    vm.send(b"guest#");
    vm.expect("guest#", 1);
    let stop = run(&["exec", socket.to_str().unwrap(), "stop"], "");
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let output = vm.expect("\"event\":\"STOP\"", 1);
    assert!(
        output.contains("guest#\r\n{\"event\":\"STOP\""),
        "the event line must start on a fresh line: {output:?}"
    );
    assert!(!output.contains("guest#\r{"), "{output:?}");
    let cont = run(&["exec", socket.to_str().unwrap(), "cont"], "");
    assert!(cont.status.success());
    vm.expect("\"event\":\"RESUME\"", 1);
    vm.send(b"\x1dk");
    assert!(vm.wait().success(), "{}", vm.output());
}

#[test]
fn run_json_prints_json_lines_on_stderr() {
    let mut vm = qemu_test_support::cli::Piped::spawn(bin().args([
        "run",
        "--json",
        "--shutdown-timeout",
        "20",
    ]));
    vm.expect("READY");
    // The end of stdin: the graceful stop.
    vm.close_stdin();
    let status = vm.wait_timeout(std::time::Duration::from_secs(40));
    let stderr = text(&vm.stderr());
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?} in {stderr}"))
        })
        .collect();
    let launched = lines
        .iter()
        .find(|l| l["status"] == "launched")
        .unwrap_or_else(|| panic!("{stderr}"));
    let pid = launched["pid"].as_u64().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "SHUTDOWN" && l["data"]["reason"] == "guest-shutdown"),
        "{stderr}"
    );
    let exited = lines.last().unwrap();
    assert_eq!(exited["status"], "exited", "{stderr}");
    assert_eq!(exited["code"], 0, "{stderr}");
    assert_gone(pid as u32);

    // A failure is a JSON line too.
    let failed = run(&["run", "--json", "--config", "/nonexistent/vm.toml"], "");
    assert_eq!(failed.status.code(), Some(1));
    let line: serde_json::Value = serde_json::from_slice(&failed.stderr).unwrap();
    assert_eq!(line["status"], "error");
    assert!(line["message"]
        .as_str()
        .unwrap()
        .contains("cannot read /nonexistent/vm.toml"));
}

/// The Linux test guest's kernel, or a failure saying how to build it.
fn linux_kernel() -> PathBuf {
    let kernel = linux_guest_dir().join("vmlinuz");
    assert!(
        kernel.exists(),
        "the Linux test guest is not built: run guests/build-linux-guest.sh (scripts/test does)"
    );
    kernel
}

/// The words of the one command in a `--dry-run` script, as `sh` splits them.
fn shell_split(script: &str) -> Vec<String> {
    let commands: Vec<&str> = script
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(commands.len(), 1, "{script}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\0' {}", commands[0]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .split_terminator('\0')
        .map(String::from)
        .collect()
}

#[test]
fn dry_run_prints_a_command_that_runs_by_hand() {
    let kernel = linux_kernel();
    let initrd = linux_guest_dir().join("initrd.gz");
    let out = run(
        &[
            "run",
            "--dry-run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--append",
            "console=ttyS0 panic=-1",
            "-m",
            "256M",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    let argv = shell_split(&script);
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "-append" && w[1] == "console=ttyS0 panic=-1"),
        "{argv:?}"
    );
    // Run by hand, it boots the kernel with its console on stdout.
    let qemu = qemu_test_support::cli::Piped::spawn(Command::new(&argv[0]).args(&argv[1..]));
    qemu.expect("Linux version");
    drop(qemu);

    // The built-in guest: the script writes its disk first, then boots it.
    let builtin = run(&["run", "--dry-run"], "");
    assert_eq!(builtin.status.code(), Some(0), "{}", text(&builtin.stderr));
    let script = text(&builtin.stdout);
    assert!(script.contains("printf '\\372"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let mut qemu = qemu_test_support::cli::Piped::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path()),
    );
    qemu.expect("READY");
    // Ctrl-X: the built-in guest leaves through isa-debug-exit.
    qemu.send(&[qemu_machine::guest::DEBUG_EXIT]);
    let status = qemu.wait_timeout(std::time::Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(qemu_machine::guest::DEBUG_EXIT_STATUS),
        "{}",
        qemu.output()
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("builtin-guest.img"))
            .unwrap()
            .len(),
        qemu_machine::guest::IMAGE_SIZE
    );
}

#[test]
fn a_config_file_is_the_same_as_the_flags_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        r#"
accel = "tcg"
memory = "256M"
kernel = "vmlinuz"
initrd = "/boot/initrd.gz"
append = "console=ttyS0 quiet"
qmp = "/tmp/vm.qmp"
console_log = "/tmp/console.log"
keep_run_dir = true
timeout = 10
shutdown_timeout = 5
binary = "qemu-system-x86_64"
qemu_args = ["-smp", "2"]
smp = 3
cpu = "qemu64"
disk = ["data.img,format=qcow2,if=scsi"]
net = ["user,hostfwd=tcp::0-:22"]
share = ["src,tag=src,readonly=off"]
ga = "/tmp/vm.ga"
exec = "make check"
prompt = "guest# "
exec_timeout = 100
"#,
    )
    .unwrap();
    let kernel = dir.path().join("vmlinuz");
    let data = format!(
        "{},format=qcow2,if=scsi",
        dir.path().join("data.img").display()
    );
    let src = format!("{},tag=src,readonly=off", dir.path().join("src").display());
    // `$QEMU` counts as `--binary` (over the file): the file's binary must win here.
    let dry_run = |args: &[&str]| output_with_input(bin().env_remove("QEMU").args(args), b"");
    let from_file = dry_run(&["run", "--dry-run", "--config", config.to_str().unwrap()]);
    assert!(from_file.status.success(), "{}", text(&from_file.stderr));
    let from_flags = dry_run(&[
        "run",
        "--dry-run",
        "--accel",
        "tcg",
        "-m",
        "256M",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        "/boot/initrd.gz",
        "--append",
        "console=ttyS0 quiet",
        "--qmp",
        "/tmp/vm.qmp",
        "--console-log",
        "/tmp/console.log",
        "--keep-run-dir",
        "--timeout",
        "10",
        "--shutdown-timeout",
        "5",
        "--binary",
        "qemu-system-x86_64",
        "--smp",
        "3",
        "--cpu",
        "qemu64",
        "--disk",
        &data,
        "--net",
        "user,hostfwd=tcp::0-:22",
        "--share",
        &src,
        "--ga",
        "/tmp/vm.ga",
        "--exec",
        "make check",
        "--prompt",
        "guest# ",
        "--exec-timeout",
        "100",
        "--",
        "-smp",
        "2",
    ]);
    assert!(from_flags.status.success(), "{}", text(&from_flags.stderr));
    let argv = shell_split(&text(&from_flags.stdout));
    for device in [
        "-smp 3",
        "-cpu qemu64",
        "-device virtio-scsi-pci,id=qm-scsi",
        "-netdev user,id=qm-net0,hostfwd=tcp:127.0.0.1:0-:22",
        "-device virtio-9p-pci,fsdev=qm-fs0,mount_tag=src",
    ] {
        assert!(argv.join(" ").contains(device), "{device}: {argv:?}");
    }
    assert!(text(&from_flags.stdout).contains("# --ga /tmp/vm.ga"));
    assert_eq!(text(&from_file.stdout), text(&from_flags.stdout));
    // Relative paths in the file are relative to its directory.
    assert!(
        shell_split(&text(&from_file.stdout)).contains(&kernel.display().to_string()),
        "{}",
        text(&from_file.stdout)
    );

    let overridden = run(
        &[
            "run",
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
            "-m",
            "512M",
            "--",
            "-smp",
            "4",
        ],
        "",
    );
    let argv = shell_split(&text(&overridden.stdout));
    assert!(argv.windows(2).any(|w| w == ["-m", "512M"]), "{argv:?}");
    assert!(argv.windows(2).any(|w| w == ["-smp", "4"]), "{argv:?}");
    assert!(!argv.contains(&"256M".to_string()), "{argv:?}");
    assert!(!argv.contains(&"2".to_string()), "{argv:?}");
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.toml");
    std::fs::write(&config, "memory = \"256M\"\nmemroy = \"1G\"\n").unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("qemu-machine: "), "{stderr}");
    assert!(stderr.contains("unknown field `memroy`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let missing = run(&["run", "--config", "/nonexistent/vm.toml"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/vm.toml"));
}

#[test]
fn the_linux_guest_powers_off_on_ctrl_bracket_q_and_keeps_its_prompt() {
    let guest = linux_guest_dir();
    let kernel = linux_kernel();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.qmp");
    let mut vm = OnPty::spawn(bin().args([
        "run",
        "-m",
        "256M",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        guest.join("initrd.gz").to_str().unwrap(),
        "--append",
        "console=ttyS0 quiet panic=-1",
        "--qmp",
        socket.to_str().unwrap(),
        "--shutdown-timeout",
        "60",
    ]));
    vm.expect("guest# ", 1);
    let pid = pid_in(&vm.output());
    let stop = run(&["exec", socket.to_str().unwrap(), "stop"], "");
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let output = vm.expect("\"event\":\"STOP\"", 1);
    // The prompt has no newline (busybox follows it with a cursor position query): the
    // event starts on the next line, with no bare carriage return going back over it.
    let prompt = &output[output.rfind("guest# ").unwrap()..];
    let between = &prompt[..prompt.find("{\"event\":\"STOP\"").unwrap()];
    assert!(between.ends_with("\r\n"), "{between:?}");
    assert!(!between.replace("\r\n", "").contains('\r'), "{between:?}");
    let cont = run(&["exec", socket.to_str().unwrap(), "cont"], "");
    assert!(cont.status.success());
    vm.expect("\"event\":\"RESUME\"", 1);
    // acpid runs poweroff on the power button.
    vm.send(b"\x1dq");
    let status = vm.wait();
    let output = vm.output();
    assert!(status.success(), "{status}: {output}");
    assert!(output.contains("\"reason\":\"guest-shutdown\""), "{output}");
    assert!(!output.contains("sending quit"), "{output}");
    assert_gone(pid);
    assert!(!socket.exists());
}

#[test]
fn dry_run_matches_what_run_starts() {
    // The dry run renders the library's command line itself (the library cannot render it
    // without launching): compare it with the command line of the QEMU `run` starts, with
    // the socketpair monitor and console swapped for what the dry run puts there.
    let guest = linux_guest_dir();
    let kernel = linux_kernel();
    let initrd = guest.join("initrd.gz");
    // The typed devices too: a disk (a comma in its path), a scsi one, a forward, a share.
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("a,b.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let disk = format!(
        "{},format=raw,readonly=on",
        image.to_str().unwrap().replace(',', ",,")
    );
    let scsi = format!(
        "{},if=scsi,snapshot=on",
        image.to_str().unwrap().replace(',', ",,")
    );
    let share = format!("{},tag=src", scratch.path().display());
    let flags = [
        "--accel",
        "tcg",
        "-m",
        "256M",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        "console=ttyS0 quiet panic=-1",
        "--smp",
        "2",
        "--cpu",
        "qemu64",
        "--disk",
        &disk,
        "--disk",
        &scsi,
        "--net",
        "user,hostfwd=tcp:127.0.0.1:0-:22,hostfwd=tcp::0-:80",
        "--share",
        &share,
        "--",
        "-smp",
        "1",
    ];
    let dry = run(&[&["run", "--dry-run"][..], &flags].concat(), "");
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let dry = shell_split(&text(&dry.stdout));

    let mut vm = OnPty::spawn(bin().arg("run").args(flags));
    let qemu = pid_in(&vm.expect("(pid ", 1));
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    vm.send(b"\x1dk");
    assert!(vm.wait().success(), "{}", vm.output());
    let mut real: Vec<String> = text(&cmdline)
        .split_terminator('\0')
        .map(String::from)
        .collect();
    // Under a wrapper such as scripts/fetch-qemu's (`exec REAL -L DIR "$@"`), QEMU's own
    // command line has the real binary and its `-L DIR` first: compare what follows.
    if real.get(1).map(String::as_str) == Some("-L") && real.len() > 2 {
        real.drain(1..3);
        real[0] = dry[0].clone();
    }
    let mut swapped = Vec::new();
    let mut words = real.iter().peekable();
    while let Some(word) = words.next() {
        let next = words.peek().map(|w| w.as_str()).unwrap_or("");
        if word == "-chardev" && next.starts_with("socket,id=mon,fd=") {
            words.next();
            assert_eq!(words.next().map(String::as_str), Some("-mon"), "{real:?}");
            words.next();
        } else if word == "-chardev" && next.starts_with("socket,id=console,fd=") {
            words.next();
            assert_eq!(
                words.next().map(String::as_str),
                Some("-serial"),
                "{real:?}"
            );
            assert_eq!(
                words.next().map(String::as_str),
                Some("chardev:console"),
                "{real:?}"
            );
            swapped.extend(["-serial".to_string(), "mon:stdio".to_string()]);
        } else {
            swapped.push(word.clone());
        }
    }
    assert_eq!(dry, swapped, "real: {real:?}");
}
