//! Sockets and private files are 0600 even under umask 0. The umask is process-wide, so this
//! is a test binary of its own with a single test.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use qmp::fake::FakePeer;
use qmp::{Client, Listener};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn sockets_are_private_under_umask_0() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let dir = tempfile::tempdir().unwrap();

    let listen = dir.path().join("qmp.sock");
    let listener = Listener::bind_unix(&listen).unwrap();
    assert_eq!(mode(&listen), 0o600);

    let (ours, mut fake) = FakePeer::pair().unwrap();
    let peer = tokio::spawn(async move {
        fake.handshake().await?;
        fake.wait_closed(Duration::from_secs(5)).await
    });
    let transcript = dir.path().join("qmp.log");
    let upstream = Client::builder()
        .transcript(&transcript)
        .adopt_unix(ours)
        .await
        .unwrap();
    assert_eq!(mode(&transcript), 0o600);
    let mux_path = dir.path().join("mux.sock");
    let mux = qmp::Multiplexer::serve(upstream, &mux_path).unwrap();
    assert_eq!(mode(&mux_path), 0o600);

    let state = dir.path().join("state");
    qmp::fsutil::create_private_file(&state).unwrap();
    assert_eq!(mode(&state), 0o600);
    let log = dir.path().join("log");
    qmp::fsutil::open_private_append(&log).unwrap();
    assert_eq!(mode(&log), 0o600);

    // No temporary directory or file is left next to them.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["log", "mux.sock", "qmp.log", "qmp.sock", "state"]);
    drop(mux);
    drop(listener);
    peer.await.unwrap().unwrap();
}
