//! Typed devices against real QEMU and the Linux test guest: the guest booted from typed
//! kernel/initrd/memory, disks through virtio-blk and SCSI read and written in the guest,
//! a host-forwarded TCP port, an entropy source, and configuration errors before launch.
//! Virtiofs shares are mounted and used in the guest, each served by a supervised
//! `virtiofsd`; 9p shares in the guest built with Debian's generic kernel (the cloud
//! kernel has no 9p).

use qemu_test_support::machine as common;

use std::io::Read;
use std::time::Duration;

use common::{linux_guest_dir, wait_for_shell, Scratch};
use qemu_machine::devices::{Disk, DiskInterface, Share9p, UserNet};
use qemu_machine::virtiofs::VirtioFs;
use qemu_machine::{Accel, ErrorKind, Machine, MachineBuilder, RunOptions};

const T: Duration = Duration::from_secs(30);

fn typed_linux_guest(scratch: &Scratch) -> MachineBuilder {
    guest_from(scratch, &linux_guest_dir())
}

fn guest_from(scratch: &Scratch, dir: &std::path::Path) -> MachineBuilder {
    scratch
        .builder()
        .machine_type("pc")
        .accel(Accel::KvmOrTcg)
        .console(None, 0)
        .memory_mib(256)
        .cpus(1)
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initrd.gz"))
        .kernel_cmdline("console=ttyS0 quiet panic=-1")
        .args(["-no-reboot"])
}

async fn run(vm: &Machine, command: &str) -> qemu_machine::CommandOutput {
    let done = vm
        .console()
        .unwrap()
        .run(command, RunOptions::new(T))
        .await
        .unwrap();
    assert_eq!(done.status, 0, "{command}: {}", done.output);
    done
}

fn image(dir: &std::path::Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = content.to_vec();
    bytes.resize(1024 * 1024, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn disks_through_virtio_and_scsi_are_read_and_written_in_the_guest() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    // A comma in the name: escaped as ",," on the command line.
    let virtio = image(files.path(), "virtio,disk.img", b"from-host-virtio\n");
    let scsi = image(files.path(), "scsi.img", b"from-host-scsi\n");
    let mut vm = Machine::new(
        typed_linux_guest(&scratch)
            .disk(Disk::new(&virtio))
            .disk(Disk::new(&scsi).interface(DiskInterface::Scsi))
            .entropy(),
    );
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    let read = run(&vm, "head -c 17 /dev/vda").await;
    assert_eq!(read.output, "from-host-virtio\n");
    // The SCSI disk may take a moment to be probed.
    run(
        &vm,
        "for i in $(seq 50); do [ -b /dev/sda ] && break; sleep 0.2; done",
    )
    .await;
    let read = run(&vm, "head -c 15 /dev/sda").await;
    assert_eq!(read.output, "from-host-scsi\n");
    run(
        &vm,
        "printf guest-virtio | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null",
    )
    .await;
    run(
        &vm,
        "printf guest-scsi | dd of=/dev/sda bs=512 seek=1 conv=fsync 2>/dev/null",
    )
    .await;
    run(&vm, "sync").await;
    let rng = run(&vm, "cat /sys/class/misc/hw_random/rng_current").await;
    assert!(rng.output.contains("virtio"), "{}", rng.output);
    vm.kill().await.unwrap();
    for (path, wanted) in [(&virtio, &b"guest-virtio"[..]), (&scsi, &b"guest-scsi"[..])] {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(
            &bytes[512..512 + wanted.len()],
            wanted,
            "{}",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_host_forwarded_port_reaches_a_listener_in_the_guest() {
    let scratch = Scratch::new();
    let mut vm =
        Machine::new(typed_linux_guest(&scratch).user_net(UserNet::new().forward_tcp(0, 8080)));
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    let port = vm.host_port(8080).await.unwrap();
    assert_ne!(port, 0);
    run(&vm, "ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up").await;
    run(
        &vm,
        "(echo hi-from-guest | nc -l -p 8080 >/dev/null 2>&1 &)",
    )
    .await;
    // The listener may need a moment; slirp accepts at once and closes if nobody listens.
    let deadline = std::time::Instant::now() + T;
    let got = loop {
        let got = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            Some(text)
        })
        .await
        .unwrap();
        match got {
            Some(text) if !text.is_empty() => break text,
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            other => panic!("no answer through the forward: {other:?}"),
        }
    };
    assert_eq!(got, "hi-from-guest\n");
    vm.kill().await.unwrap();
}

#[tokio::test]
async fn bad_devices_fail_the_launch_with_a_config_error() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    let disk = image(files.path(), "d.img", b"");
    for (builder, wanted) in [
        (
            typed_linux_guest(&scratch).disk(Disk::new(files.path().join("missing.img"))),
            "does not exist",
        ),
        (
            typed_linux_guest(&scratch).disk(Disk::new(&disk).format("qcow7")),
            "unknown image format",
        ),
        (
            typed_linux_guest(&scratch).share_9p(Share9p::new("x", &disk)),
            "not a directory",
        ),
    ] {
        let mut vm = Machine::new(builder);
        let err = vm.launch().await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Config(_)), "{err}");
        assert!(err.to_string().contains(wanted), "{err}");
    }
}

/// What QEMU made of the rendered options: a read-only and a writable share, the tag and
/// path with a comma escaped.
#[tokio::test]
async fn nine_p_shares_are_accepted_by_qemu() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    let shared = files.path().join("a,b");
    std::fs::create_dir(&shared).unwrap();
    let mut vm = Machine::new(
        scratch
            .builder()
            .share_9p(Share9p::new("ro", &shared))
            .share_9p(Share9p::new("rw", files.path()).writable(true)),
    );
    vm.launch().await.unwrap();
    let qtree = vm
        .cmd(
            "human-monitor-command",
            serde_json::json!({"command-line": "info qtree"}),
        )
        .await
        .unwrap();
    let qtree = qtree.as_str().unwrap_or_default();
    assert!(qtree.contains("mount_tag = \"ro\""), "{qtree}");
    assert!(qtree.contains("mount_tag = \"rw\""), "{qtree}");
    let argv = vm.command_line().unwrap().join(" ");
    assert!(
        argv.contains(&format!(
            "path={}/a,,b,security_model=none,readonly=on",
            files.path().display()
        )),
        "{argv}"
    );
    vm.shutdown().await.unwrap();
}

/// Mounts the shares tagged `ro` and `rw` with `mount` (the command up to the tag) on
/// /mnt/ro and /mnt/rw: the host's `hello` is read from `ro` (the host dir `ro`), a write
/// there is refused and absent on the host, and a file written to `rw` is read on the host.
async fn use_shares(vm: &Machine, mount: &str, ro: &std::path::Path, rw: &std::path::Path) {
    run(
        vm,
        &format!("mkdir -p /mnt/ro /mnt/rw && {mount} ro /mnt/ro && {mount} rw /mnt/rw"),
    )
    .await;
    assert_eq!(
        run(vm, "cat /mnt/ro/hello").await.output.trim(),
        "from-host"
    );
    let refused = vm
        .console()
        .unwrap()
        .run("echo x > /mnt/ro/new", RunOptions::new(T))
        .await
        .unwrap();
    assert_ne!(refused.status, 0, "{}", refused.output);
    assert!(refused.output.contains("Read-only"), "{}", refused.output);
    assert!(!ro.join("new").exists());
    run(vm, "echo from-guest > /mnt/rw/written && sync").await;
    assert_eq!(
        std::fs::read_to_string(rw.join("written")).unwrap(),
        "from-guest\n"
    );
}

/// The pids of running processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie is gone for our purposes only once reaped: count it.
            !stat.is_empty() && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

#[tokio::test]
async fn virtiofs_shares_are_read_and_written_in_the_guest_and_their_daemons_go_with_it() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    let (ro, rw) = (files.path().join("ro"), files.path().join("rw"));
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("hello"), "from-host\n").unwrap();
    let daemon = qemu_test_support::virtiofsd();
    let mut vm = Machine::new(
        typed_linux_guest(&scratch)
            .share_virtiofs(VirtioFs::new("ro", &ro).daemon(&daemon))
            .share_virtiofs(VirtioFs::new("rw", &rw).writable(true).daemon(&daemon)),
    );
    vm.launch().await.unwrap();
    let marker = files.path().display().to_string();
    let daemons = processes_mentioning(&marker);
    assert!(daemons.len() >= 2, "two daemons run: {daemons:?}");
    wait_for_shell(&vm).await;
    use_shares(&vm, "mount -t virtiofs", &ro, &rw).await;
    vm.shutdown().await.unwrap();
    // The daemons were killed and reaped with the machine.
    assert_eq!(processes_mentioning(&marker), Vec::<u32>::new());
}

#[tokio::test]
async fn a_virtiofs_share_without_a_daemon_is_a_config_error_before_launch() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    let mut vm = Machine::new(
        scratch
            .builder()
            .share_virtiofs(VirtioFs::new("x", files.path()).daemon(files.path().join("none"))),
    );
    let err = vm.launch().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Config(_)), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let mut raw_memory = Machine::new(
        scratch
            .builder()
            .share_virtiofs(VirtioFs::new("x", files.path()).daemon("/bin/true"))
            .args(["-m", "512"]),
    );
    let err = raw_memory.launch().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Config(_)), "{err}");
    assert!(err.to_string().contains("memory_mib()"), "{err}");
}

#[tokio::test]
async fn nine_p_shares_are_read_and_written_in_the_guest_and_read_only_refuses_writes() {
    let scratch = Scratch::new();
    let files = tempfile::tempdir().unwrap();
    let (ro, rw) = (files.path().join("r,o"), files.path().join("rw"));
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("hello"), "from-host\n").unwrap();
    let mut vm = Machine::new(
        guest_from(&scratch, &common::linux_9p_guest_dir())
            .share_9p(Share9p::new("ro", &ro))
            .share_9p(Share9p::new("rw", &rw).writable(true)),
    );
    vm.launch().await.unwrap();
    wait_for_shell(&vm).await;
    use_shares(
        &vm,
        "mount -t 9p -o trans=virtio,version=9p2000.L",
        &ro,
        &rw,
    )
    .await;
    vm.shutdown().await.unwrap();
}
