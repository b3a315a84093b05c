//! Hostile input and faults: every bound holds and every failure is a typed error, never a
//! panic, a hang or unbounded memory.

use std::time::Duration;

use qmp::fake::FakePeer;
use qmp::{Client, Error, EventFilter, Listener, Request};
use serde_json::json;

const T: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::MAX;

/// A client (with every builder timeout at `Duration::MAX`) talking to a fake that
/// handshakes and then runs `then`.
async fn client_with<F, Fut>(then: F) -> (Client, tokio::task::JoinHandle<std::io::Result<()>>)
where
    F: FnOnce(FakePeer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (ours, mut fake) = FakePeer::pair().unwrap();
    let task = tokio::spawn(async move {
        fake.handshake().await?;
        then(fake).await
    });
    let client = Client::builder()
        .connect_timeout(MAX)
        .greeting_timeout(MAX)
        .command_timeout(MAX)
        .adopt_unix(ours)
        .await
        .expect("handshake");
    (client, task)
}

#[tokio::test]
async fn no_duration_reaches_a_panic() {
    // execute with Request::timeout(MAX) against a peer that reads the command, then closes.
    let (client, fake) = client_with(|mut fake| async move {
        fake.expect_command("query-status", T).await?;
        Ok(())
    })
    .await;
    let err = client
        .execute_request(Request::new("query-status").timeout(MAX))
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();

    // execute_and_wait with MAX: the reply comes, then the peer closes before the event.
    let (client, fake) = client_with(|mut fake| async move {
        let request = fake.expect_command("stop", T).await?;
        fake.reply(&request, json!({})).await?;
        Ok(())
    })
    .await;
    let err = client
        .execute_and_wait(Request::new("stop"), EventFilter::name("STOP"), MAX)
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();

    // Subscription::recv_timeout(MAX) ends with the session.
    let (client, fake) = client_with(|_fake| async move { Ok(()) }).await;
    let mut events = client.subscribe(EventFilter::all());
    let err = events.recv_timeout(MAX).await.unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    fake.await.unwrap().unwrap();

    // Builder timeouts at MAX against a peer that closes before greeting.
    let (ours, fake) = FakePeer::pair().unwrap();
    drop(fake);
    let err = Client::builder()
        .connect_timeout(MAX)
        .greeting_timeout(MAX)
        .adopt_unix(ours)
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = Client::builder()
        .connect_timeout(MAX)
        .connect_unix(dir.path().join("absent.sock"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    // Listener::accept with MAX: a peer connects and closes at once.
    let path = dir.path().join("listen.sock");
    let listener = Listener::bind_unix(&path).unwrap();
    let peer = std::os::unix::net::UnixStream::connect(&path).unwrap();
    drop(peer);
    let err = listener
        .accept(Client::builder().greeting_timeout(MAX), MAX)
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(!path.exists());

    // The deadline type itself.
    assert!(qmp::Deadline::after(MAX).is_never());
}

#[test]
fn no_duration_reaches_a_panic_in_the_blocking_facade() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut fake = FakePeer::adopt(theirs)?;
            fake.handshake().await?;
            let request = fake.expect_command("stop", T).await?;
            fake.reply(&request, json!({})).await
        })
    });
    let client = qmp::blocking::Client::adopt_unix(
        Client::builder().greeting_timeout(MAX).command_timeout(MAX),
        ours,
    )
    .unwrap();
    let mut events = client.subscribe(EventFilter::all()).unwrap();
    let err = client
        .execute_and_wait(
            Request::new("stop").timeout(MAX),
            EventFilter::name("STOP"),
            MAX,
        )
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let err = events.recv_timeout(MAX).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    peer.join().unwrap().unwrap();
}
