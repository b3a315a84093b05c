//! `qemu-machine run` with typed devices (`--smp`, `--cpu`, `--disk`, `--net`, `--share`,
//! `--ga`) and `--exec`, against real QEMU and the Linux test guest. Each test leaves
//! nothing behind: QEMU is gone, and the run dirs (under a private `XDG_RUNTIME_DIR`) and
//! sockets are removed.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use qemu_test_support::cli::{assert_gone, dir_entries, output_with_input, pid_in, OnPty};
use qemu_test_support::KillOnDrop;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qemu-machine"));
    command.env_remove("QMP_SOCKET");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn guest() -> PathBuf {
    qemu_test_support::guests::built_linux_guest_dir()
}

/// Where run dirs go for one test: checked empty at the end.
struct RunDirs(tempfile::TempDir);

impl RunDirs {
    fn new() -> RunDirs {
        RunDirs(tempfile::tempdir().unwrap())
    }

    /// `qemu-machine run` booting the Linux guest, its run dir in here, then `args`.
    fn run(&self, args: &[&str]) -> Command {
        self.run_with("256M", "console=ttyS0 quiet panic=-1", args)
    }

    /// [`run`](Self::run) with this memory and kernel command line.
    fn run_with(&self, memory: &str, append: &str, args: &[&str]) -> Command {
        let guest = guest();
        let mut command = bin();
        command.env("XDG_RUNTIME_DIR", self.0.path()).args([
            "run".as_ref(),
            "-m".as_ref(),
            memory.as_ref(),
            "--kernel".as_ref(),
            guest.join("vmlinuz").as_os_str(),
            "--initrd".as_ref(),
            guest.join("initrd.gz").as_os_str(),
            "--append".as_ref(),
            append.as_ref(),
        ]);
        command.args(args);
        command
    }

    fn assert_empty(&self) {
        assert_eq!(dir_entries(self.0.path()), Vec::<String>::new());
    }
}

/// `run ... --exec COMMAND` to the end, stdin empty; checks QEMU and its run dir are gone.
fn exec(args: &[&str], command: &str) -> Output {
    let dirs = RunDirs::new();
    let out = output_with_input(dirs.run(args).args(["--exec", command]), b"");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("(pid "), "{stderr}");
    assert_gone(pid_in(&stderr));
    dirs.assert_empty();
    out
}

#[test]
fn exec_prints_the_guest_kernel_and_exits_with_its_status() {
    let version = std::fs::read_to_string(guest().join("version")).unwrap();
    // `exit` would end the guest's only shell: a subshell's status is the command's.
    let out = exec(&[], "uname -r; (exit 3)");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim(), version.trim(), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Powered off gracefully, not quit.
    let stderr = text(&out.stderr);
    assert!(stderr.contains("\"reason\":\"guest-shutdown\""), "{stderr}");
}

#[test]
fn exec_streams_output_while_it_runs() {
    let dirs = RunDirs::new();
    let mut child = KillOnDrop(
        dirs.run(&[
            "--exec",
            "for i in 1 2 3 4 5; do echo line$i; sleep 1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut first = None;
    let mut last = None;
    let mut buf = [0u8; 256];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&text(&buf[..n]));
        if first.is_none() && seen.contains("line1\n") {
            first = Some(Instant::now());
        }
        if last.is_none() && seen.contains("line5\n") {
            last = Some(Instant::now());
        }
    }
    let status = child.wait().unwrap();
    let stderr = text(&stderr.join().unwrap());
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(seen, "line1\nline2\nline3\nline4\nline5\n", "{stderr}");
    let (first, last) = (first.unwrap(), last.unwrap());
    // Four one-second sleeps between them: line1 was on stdout long before line5.
    assert!(
        last.duration_since(first) >= Duration::from_secs(3),
        "{:?}",
        last.duration_since(first)
    );
    assert_gone(pid_in(&stderr));
    dirs.assert_empty();
}

#[test]
fn a_disk_with_a_kernel_is_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("data,1.img");
    let made = Command::new(qemu_test_support::qemu_img())
        .args(["create", "-q", "-f", "raw"])
        .arg(&image)
        .arg("1M")
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    // A comma in the path is written ,, as in QEMU.
    let spec = format!("{},format=raw", image.to_str().unwrap().replace(',', ",,"));
    let out = exec(
        &["--disk", &spec],
        "echo hello-from-the-guest | dd of=/dev/vda conv=fsync 2>/dev/null",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = std::fs::read(&image).unwrap();
    assert!(
        written.starts_with(b"hello-from-the-guest\n"),
        "{:?}",
        &written[..32]
    );

    // snapshot=on: the guest's writes never reach the image.
    let spec = format!(
        "{},format=raw,snapshot=on",
        image.to_str().unwrap().replace(',', ",,")
    );
    let out = exec(
        &["--disk", &spec],
        "echo overwritten | dd of=/dev/vda conv=fsync 2>/dev/null; head -c 20 /dev/vda",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The guest reads its own write back (bytes 12 to 20 are the old data's)...
    assert_eq!(text(&out.stdout).trim_end(), "overwritten\nhe-guest");
    // ...which never reached the image.
    assert!(std::fs::read(&image)
        .unwrap()
        .starts_with(b"hello-from-the-guest\n"));
}

#[test]
fn smp_and_cpu_reach_the_guest() {
    let out = exec(
        &["--smp", "2", "--cpu", "qemu64"],
        "grep -c ^processor /proc/cpuinfo; grep -m1 'model name' /proc/cpuinfo",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("2"), "{stdout}");
    assert!(
        lines.next().unwrap().contains("QEMU Virtual CPU"),
        "{stdout}"
    );
}

#[test]
fn bad_device_values_are_usage_errors_naming_the_key() {
    for (args, named) in [
        (&["--disk", "/x.img,if=floppy"][..], "key if"),
        (&["--disk", "/x.img,cache=none"][..], "\"cache\""),
        (&["--net", "user,hostfwd=udp::0-:2"][..], "key hostfwd"),
        (&["--share", "/tmp,readonly=perhaps"][..], "key readonly"),
        (&["--smp", "0"][..], "--smp"),
        (&["--prompt", "(", "--exec", "true"][..], "--prompt"),
    ] {
        let out = output_with_input(bin().arg("run").args(args), b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn net_user_hostfwd_reaches_a_guest_listener() {
    let dirs = RunDirs::new();
    // The test guest does not configure its network: the command does (slirp's guest
    // address), then busybox nc answers one connection and exits.
    let mut child = KillOnDrop(
        dirs.run(&[
            "--net",
            "user,hostfwd=tcp:127.0.0.1:0-:8080",
            "--exec",
            "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && \
             echo hello-from-the-guest | nc -l -p 8080",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = lines.send(text(&all));
        }
        text(&all)
    });
    // The actual port is printed as a status line after launch.
    let deadline = Instant::now() + Duration::from_secs(60);
    let port: u16 = loop {
        let so_far = seen.recv_timeout(Duration::from_secs(60)).unwrap();
        if let Some(at) = so_far.find("tcp 127.0.0.1:") {
            let rest = &so_far[at + "tcp 127.0.0.1:".len()..];
            if let Some(end) = rest.find(" -> guest 8080") {
                break rest[..end].parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "{so_far}");
    };
    assert_ne!(port, 0);
    // Until the guest listens, slirp accepts and closes at once: try again.
    let mut answer = String::new();
    while Instant::now() < deadline + Duration::from_secs(60) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut got = Vec::new();
            let _ = stream.read_to_end(&mut got);
            answer = text(&got);
            if answer.contains("hello-from-the-guest") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(answer, "hello-from-the-guest\n");
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_gone(pid_in(&stderr));
    dirs.assert_empty();
}

#[test]
fn ga_reaches_the_agent_while_run_is_attached() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = RunDirs::new();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("agent.sock");
    let mut vm = OnPty::spawn(&mut dirs.run(&[
        "--ga",
        socket.to_str().unwrap(),
        "--shutdown-timeout",
        "60",
    ]));
    vm.expect("guest# ", 1);
    let pid = pid_in(&vm.output());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // qemu-ga starts before the prompt, but give it a few tries all the same.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ping = output_with_input(
            bin().args(["ga", socket.to_str().unwrap(), "ping", "--timeout", "10"]),
            b"",
        );
        if ping.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&ping.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    vm.send(b"\x1dq");
    let status = vm.wait();
    assert!(status.success(), "{status}: {}", vm.output());
    assert_gone(pid);
    assert!(!socket.exists());
    dirs.assert_empty();
}

#[test]
fn share_is_accepted() {
    // The test guest's kernel has no 9p modules (9p, 9pnet_virtio), so the share cannot be
    // mounted there: check that QEMU starts with it and the guest sees the virtio-9p PCI
    // device (1af4:1009).
    let shared = tempfile::tempdir().unwrap();
    let spec = format!("{},tag=src", shared.path().display());
    let out = exec(
        &["--share", &spec],
        "grep -l 0x1009 /sys/bus/pci/devices/*/device | wc -l",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1");
}

/// The run-my-tests-in-a-VM workflow on the project's guest: a virtiofs share is mounted,
/// read, written (when writable) and refused writes (when read-only).
#[test]
fn virtiofs_shares_are_mounted_read_and_written_by_exec() {
    let files = tempfile::tempdir().unwrap();
    let (src, out_dir) = (files.path().join("src"), files.path().join("out"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(src.join("test.sh"), "echo tests ran\n").unwrap();
    let src_spec = format!("{},tag=src,fs=virtiofs", src.display());
    let out_spec = format!("{},tag=out,fs=virtiofs,readonly=off", out_dir.display());
    let dirs = RunDirs::new();
    let out = output_with_input(
        dirs.run(&["--share", &src_spec, "--share", &out_spec])
            .env("QEMU_MACHINE_VIRTIOFSD", qemu_test_support::virtiofsd())
            .args([
                "--exec",
                "mkdir -p /src /out && mount -t virtiofs src /src && mount -t virtiofs out /out \
                 && sh /src/test.sh > /out/result && cat /out/result \
                 && ! touch /src/written 2>/dev/null",
            ]),
        b"",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), "tests ran\n");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("result")).unwrap(),
        "tests ran\n"
    );
    assert!(!src.join("written").exists());
    assert_gone(pid_in(&stderr));
    dirs.assert_empty();
}

/// `--exec` on a full Debian guest: systemd, a root autologin getty (bash's prompt and its
/// bracketed-paste sequences), the default prompt pattern, a graceful power-off.
#[test]
fn exec_runs_on_a_systemd_debian_guest_with_the_default_prompt() {
    let image = qemu_test_support::guests::debian_guest_image();
    let guest = guest();
    let dirs = RunDirs::new();
    let disk = format!("{},snapshot=on", image.display());
    let mut command = dirs.run_with(
        "512M",
        "console=ttyS0 root=/dev/vda",
        &[
            "--disk",
            &disk,
            "--exec-timeout",
            "400",
            "--exec",
            "cat /proc/1/comm; uname -r; (exit 3)",
        ],
    );
    let out = output_with_input(&mut command, b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let kernel = std::fs::read_to_string(guest.join("version")).unwrap();
    assert_eq!(text(&out.stdout), format!("systemd\n{}\n", kernel.trim()));
    assert_gone(pid_in(&stderr));
    dirs.assert_empty();
}

#[test]
fn exec_past_its_deadline_exits_124_with_the_console_tail() {
    let out = exec(&["--exec-timeout", "30"], "echo started; sleep 1000");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert_eq!(text(&out.stdout), "started\n");
    assert!(stderr.contains("--exec: timed out after 30 s"), "{stderr}");
    assert!(stderr.contains("last console output:"), "{stderr}");
}

#[test]
fn a_guest_kernel_panic_exits_125_with_the_console_tail() {
    let out = exec(&[], "echo c > /proc/sysrq-trigger");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("--exec: the guest failed"), "{stderr}");
    assert!(stderr.contains("Kernel panic"), "{stderr}");
}

#[test]
fn a_ga_path_that_is_not_a_socket_is_refused() {
    let dirs = RunDirs::new();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = output_with_input(
        &mut dirs.run(&["--ga", file.to_str().unwrap(), "--exec", "true"]),
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exists and is not a socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    dirs.assert_empty();
}
