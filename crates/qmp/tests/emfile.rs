//! The multiplexer survives EMFILE on accept: it logs, backs off and goes on. The file
//! limit is process-wide, so this is a test binary of its own with a single test.

use std::os::fd::OwnedFd;
use std::time::Duration;

use qmp::fake::FakePeer;
use qmp::Client;
use serde_json::json;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn accept_errors_do_not_stop_it() {
    let (ours, mut fake) = FakePeer::pair().unwrap();
    tokio::spawn(async move {
        fake.handshake().await?;
        fake.serve(|_| qmp::fake::Reply::Return(json!({"status": "running"})))
            .await
    });
    let upstream = Client::builder().adopt_unix(ours).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let _mux = qmp::Multiplexer::serve(upstream, &path).unwrap();

    // A small limit, so using every descriptor up is quick.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        512.min(hard),
        hard,
    )
    .unwrap();
    // Use up every descriptor, keeping one for the client's own socket.
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut hogs: Vec<OwnedFd> = Vec::new();
    loop {
        match null.try_clone() {
            Ok(file) => hogs.push(file.into()),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::EMFILE), "{e}");
                break;
            }
        }
        assert!(hogs.len() < 2_000_000, "no descriptor limit?");
    }
    hogs.pop();
    let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    // The multiplexer cannot accept it now (EMFILE): it backs off, again and again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let unserved = std::io::Read::read(&mut &client, &mut byte);
    assert_eq!(
        unserved.unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "served while out of descriptors?"
    );
    let hogged = hogs.len();
    drop(hogs);
    // ... and serves it once descriptors are free again.
    let mut client = FakePeer::adopt(client).unwrap();
    let greeting = client.recv(T).await.unwrap();
    assert!(greeting.get("QMP").is_some(), "{greeting}");
    client
        .send(&json!({"execute": "qmp_capabilities"}))
        .await
        .unwrap();
    assert_eq!(client.recv(T).await.unwrap(), json!({"return": {}}));
    println!("held {hogged} descriptors; the multiplexer recovered");
}
