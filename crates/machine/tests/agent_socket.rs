//! The guest-agent channel served at a 0600 UNIX path, against qemu-ga in the Linux guest.

use qemu_test_support::machine as common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{linux_guest, Scratch};
use qemu_machine::{ErrorKind, Machine};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Sends `guest-sync` until qemu-ga answers with our id (it may not run yet).
async fn sync(path: &std::path::Path, id: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let stream = UnixStream::connect(path).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let request = format!("{{\"execute\":\"guest-sync\",\"arguments\":{{\"id\":{id}}}}}\n");
        write.write_all(request.as_bytes()).await.unwrap();
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await
        {
            if line.contains(&format!("\"return\": {id}")) {
                write
                    .write_all(b"{\"execute\":\"guest-info\"}\n")
                    .await
                    .unwrap();
                // Earlier syncs may still be answered first.
                loop {
                    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    if !line.contains("\"return\": ") || line.contains("version") {
                        return line;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "qemu-ga never answered");
    }
}

#[tokio::test]
async fn the_agent_channel_is_served_at_a_private_path() {
    let scratch = Scratch::new();
    let (builder, _) = linux_guest(&scratch);
    let mut vm = Machine::new(builder.guest_agent());
    vm.launch().await.unwrap();
    let path = vm.serve_guest_agent("qga.sock").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let info = sync(&path, 11).await;
    assert!(info.contains("\"version\""), "{info}");
    // A second client, after the first left.
    let info = sync(&path, 12).await;
    assert!(info.contains("\"version\""), "{info}");
    // The channel has one reader: the library's session cannot take it now.
    let err = vm.guest_agent(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoGuestAgent), "{err}");
    vm.kill().await.unwrap();
}
