//! The guest agent against qemu-ga running in the Linux test guest.

use qemu_test_support::machine as common;

use std::time::Duration;

use common::{linux_guest, Scratch};
use qemu_machine::{ErrorKind, Machine};

const AGENT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn ping_info_exec_files_and_shutdown() {
    let scratch = Scratch::new();
    let (builder, version) = linux_guest(&scratch);
    let mut vm = Machine::new(builder.guest_agent());
    vm.launch().await.unwrap();
    // No waiting for the shell: syncing waits until qemu-ga answers.
    let agent = vm.guest_agent(AGENT).await.unwrap();
    agent.ping().await.unwrap();
    let info = agent.info().await.unwrap();
    assert_eq!(
        info["version"].as_str(),
        Some(common::linux_guest_agent_version().as_str()),
        "{info}"
    );

    let out = agent.exec("/bin/uname", &["-r"], AGENT).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), version);
    let failed = agent
        .exec("/bin/sh", &["-c", "echo oops >&2; exit 3"], AGENT)
        .await
        .unwrap();
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.stderr, b"oops\n");

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    agent.write_file("/tmp/blob", &data).await.unwrap();
    assert_eq!(agent.read_file("/tmp/blob").await.unwrap(), data);

    // A second session resyncs the same connection.
    vm.guest_agent(AGENT).await.unwrap().ping().await.unwrap();

    agent.shutdown("powerdown").await.unwrap();
    vm.wait(Duration::from_secs(60)).await.unwrap();
    assert!(vm.exit_status().unwrap().success());
}

#[tokio::test]
async fn a_dead_qemu_ends_the_wait_for_the_agent_at_once() {
    let scratch = Scratch::new();
    // The built-in guest has no agent: the sync can only be unanswered.
    let mut vm = Machine::new(scratch.builder().builtin_guest().guest_agent());
    vm.launch().await.unwrap();
    let pid = vm.pid().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let start = std::time::Instant::now();
    let err = vm.guest_agent(AGENT).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(err.kind(), ErrorKind::Exited(exit) if exit.status.is_some()),
        "{err}"
    );
    let _ = vm.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_never_answers_is_a_deadline_error() {
    let scratch = Scratch::new();
    let mut vm = Machine::new(scratch.builder().builtin_guest().guest_agent());
    vm.launch().await.unwrap();
    let err = vm
        .guest_agent(Duration::from_millis(800))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("guest-sync-delimited") && text.contains("unanswered"),
        "{text}"
    );
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_agent_on_a_unix_socket_is_reconnected_until_it_answers() {
    let scratch = Scratch::new();
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("qga.sock");
    let (builder, _) = linux_guest(&scratch);
    let mut vm = Machine::new(builder.args([
        "-device".to_string(),
        "virtio-serial-pci,id=ser0".to_string(),
        "-chardev".to_string(),
        format!("socket,id=qga0,path={},server=on,wait=off", path.display()),
        "-device".to_string(),
        "virtserialport,bus=ser0.0,chardev=qga0,name=org.qemu.guest_agent.0".to_string(),
    ]));
    vm.launch().await.unwrap();
    // Connecting right away: the guest has not even booted; attempts repeat until it answers.
    let agent = qemu_machine::GuestAgent::connect(&qemu_machine::qmp::Address::Unix(path), AGENT)
        .await
        .unwrap();
    agent.ping().await.unwrap();
    let os = agent.get_osinfo().await.unwrap();
    assert!(os["kernel-release"].as_str().is_some(), "{os}");
    let interfaces = agent.network_get_interfaces().await.unwrap();
    assert!(interfaces.to_string().contains("\"lo\""), "{interfaces}");
    assert_eq!(agent.fsfreeze_status().await.unwrap(), "thawed");
    agent.shutdown("powerdown").await.unwrap();
    vm.wait(Duration::from_secs(60)).await.unwrap();
}
